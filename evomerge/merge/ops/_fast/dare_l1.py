"""DARE's L1 rescale on a search worker without a pass over the tensor per candidate.

mergekit's DARE (and ours) rescales each model's kept task vector by Σ|τ| / Σ_{u < p} |τ|, where
u are the tensor's seeded uniforms and p the keep rate. A search changes p with every candidate,
while τ and u stay fixed (the worker's ResidentCache holds u). So the worker keeps, per expert
tensor, the exact per-exponent mantissa sums (``exact_l1.l1_from_bins``' parts) of the entries
whose u falls below q/Q, for every q of Q = 256 buckets. The uniforms are packed
(``packed_uniform``: u = k · 2^-24, and u < p ⟺ k < K), so bucket q holds the entries with
k >> 16 = q. For a keep rate p, the buckets below K >> 16 are all kept (their sums are one
lookup), those above all dropped, and only the ~n/Q entries of bucket K >> 16 add their |τ|
when k < K. The first candidate whose rate falls in a bucket finds that bucket's members with
one read of the uniforms' high halves (``members``: each member's k and |τ|, in index order);
the worker keeps them, so a later rate in the same bucket reads only those ~n/Q pairs, in
order. A rate on a bucket edge (K a multiple of 2^16) needs no bucket. Sums are exact integers,
so the result is, bit for bit, the direct ``fused_gta.l1_bins`` over the whole tensor.

Memory per expert tensor: (Q + 1) × (exponents in use) int64 sums (~60 KiB for a typical τ),
and 8 bytes per member of each bucket kept (n/Q members: 1/96 of the packed uniforms' bytes
per bucket).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from evomerge.merge.ops import exact_l1
from evomerge.merge.ops._fast import fused_gta
from evomerge.merge.ops._fast.packed_uniform import Packed, below

Q = 256


@dataclass(frozen=True)
class KeptL1Table:
    prefix: np.ndarray  # (Q + 1, e_hi − e_lo + 1) int64: sums of the entries with u < q/Q
    e_lo: int

    @property
    def nbytes(self) -> int:
        return self.prefix.nbytes


def build(t: torch.Tensor, b: torch.Tensor, u: Packed) -> KeptL1Table:
    """The table of one expert tensor ``t`` (flat) against its base ``b``, ``u`` its packed
    uniforms: one read in C (``fused_gta.bucket_sums``)."""
    sums = fused_gta.bucket_sums(t, b, u)
    used = np.flatnonzero(sums.any(axis=0))
    e_lo, e_hi = (int(used[0]), int(used[-1])) if used.size else (0, 0)
    prefix = np.zeros((Q + 1, e_hi - e_lo + 1), dtype=np.int64)
    np.cumsum(sums[:, e_lo : e_hi + 1], axis=0, out=prefix[1:])
    return KeptL1Table(prefix, e_lo)


Members = Callable[[int, Callable[[], fused_gta.Listed]], fused_gta.Listed]


def _found_now(q: int, make: Callable[[], fused_gta.Listed]) -> fused_gta.Listed:
    return make()  # no cache: the members serve this call only


def members(t: torch.Tensor, b: torch.Tensor, u: Packed, q: int) -> fused_gta.Listed:
    """Bucket q's entries (q/Q ≤ u < (q+1)/Q): their k and |t − b| (``fused_gta``)."""
    return fused_gta.bucket_members(t, b, u, q)


def kept_l1(
    table: KeptL1Table,
    t: torch.Tensor,
    b: torch.Tensor,
    u: Packed,
    p: float,
    cached_members: Members = _found_now,
) -> float:
    """Σ_{u < p} |t − b|, exact, rounded once to float32 (as ``exact_l1.l1_from_bins``).
    ``cached_members(q, make)``: bucket q's members (``members``) from the worker's cache
    (``make`` finds them), so that a later candidate reads only them, not every u."""
    k = below(p)
    qp = k >> 16
    row = table.prefix[qp]
    listed = None
    if k & 0xFFFF:  # K inside bucket qp (not on its edge; K = 2^24 is the edge of bucket Q)
        listed = cached_members(qp, lambda: members(t, b, u, qp))
    value = fused_gta.kept_l1_listed(row, table.e_lo, listed, p)
    if value == value:
        return value
    bins = np.zeros(256, dtype=np.int64)  # exponents too far apart for the C rounding
    bins[table.e_lo : table.e_lo + row.size] = row
    if listed is not None:
        bins += fused_gta.l1_bins_listed(listed, p)
    return exact_l1.l1_from_bins(bins)
