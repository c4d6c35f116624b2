"""A batch asked ahead, as the store's ``pending`` table keeps it.

Drivers that ask ahead (random, Optuna, steady-state M2N2) have batch g+1 asked before batch g
is told; g's transaction records it so resume evaluates it instead of asking again. The row
holds the candidate pickled (exact) and its genes and meta as plain values (readable).
"""

from __future__ import annotations

import pickle

import numpy as np

from evomerge.drivers.base import Candidate
from evomerge.store import PendingRecord


def pending_record(c: Candidate) -> PendingRecord:
    """A candidate asked ahead as the store's ``pending`` table keeps it (exact: pickled)."""
    genes = tuple(float(v) for v in np.asarray(c.x, dtype=float).reshape(-1))
    blob = pickle.dumps((c.x, c.meta, c.wants))
    return PendingRecord(idx=c.index, genes=genes, meta=jsonable_meta(c.meta), candidate=blob)


def pending_candidate(p: PendingRecord | tuple) -> Candidate:
    """The candidate back from a pending row (or from a legacy ``(index, x, meta[, wants])``)."""
    if isinstance(p, PendingRecord):
        x, meta, wants = pickle.loads(p.candidate)
        return Candidate(index=p.idx, x=x, meta=dict(meta), wants=dict(wants))
    wants = dict(p[3]) if len(p) > 3 else {}
    return Candidate(index=p[0], x=np.asarray(p[1]), meta=dict(p[2]), wants=wants)


def jsonable_meta(meta: dict) -> dict:
    """A candidate's meta as the store's JSON column can hold it (arrays as lists, other
    objects as their repr)."""
    out = {}
    for k, v in (meta or {}).items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[str(k)] = (
            v if isinstance(v, (str, int, float, bool, list, dict, type(None))) else repr(v)
        )
    return out
