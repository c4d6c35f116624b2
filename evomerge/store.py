"""The run store: one SQLite file per run folder (schema and invariants: ``store_schema``).

``RunStore.create`` starts a run, ``RunStore.open`` reopens one (``readonly=True`` for
``evomerge status``, which may read while a search writes). ``commit_generation`` is the one
write the loop makes per generation; everything it writes lands together or not at all.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError
from evomerge.results import OK, EvalResult, JobResult
from evomerge.store_schema import DDL, KEEP_CHECKPOINTS, PENDING_DDL, SCHEMA_VERSION

STORE_FILE = "store.sqlite"


@dataclass(frozen=True)
class CandidateRecord:
    idx: int
    generation: int
    digest: str
    genes: tuple[float, ...]
    recipe_yaml: str
    reused_from: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingRecord:
    """A candidate asked ahead and not yet told: ``candidate`` is the pickled
    ``(x, meta, wants)`` resume hands back; ``genes`` and ``meta`` are JSON copies for readers."""

    idx: int
    genes: tuple[float, ...]
    meta: dict[str, Any]
    candidate: bytes


@dataclass(frozen=True)
class Checkpoint:
    generation: int
    driver_state: bytes
    rng_state: bytes
    n_candidates: int
    n_evals: int
    elapsed: float


@dataclass(frozen=True)
class ArchiveEntry:
    rank: int
    digest: str
    idx: int
    fitness: float


@dataclass(frozen=True)
class Trial:
    """A candidate joined with its result (what status, report and export read)."""

    idx: int
    generation: int
    digest: str
    genes: tuple[float, ...]
    recipe_yaml: str
    reused_from: int | None
    status: str
    fitness: float
    objectives: tuple[float, ...]
    scores: dict[str, float]
    error: str | None
    seconds: float
    worker: str

    @property
    def ok(self) -> bool:
        return self.status == OK


def _nan_to_none(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _none_to_nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _dumps(obj: Any) -> str:
    # NaN is not JSON; store it as null and read it back as NaN.
    def fix(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v

    return json.dumps(fix(obj), separators=(",", ":"))


class RunStore:
    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        run_dir: str | Path,
        config_json: str,
        structural_hash: str,
        meta: dict[str, str] | None = None,
    ) -> RunStore:
        """A new store in ``run_dir``; ``meta`` rows land in the same first transaction."""
        run_dir = Path(run_dir)
        refuse_existing(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / STORE_FILE
        store = cls(_connect(path, readonly=False), path, readonly=False)
        from evomerge import __version__

        with store._tx():
            for stmt in [*DDL.split(";"), PENDING_DDL]:
                if stmt.strip():
                    store.conn.execute(stmt)
            store.conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("evomerge_version", __version__),
                    *(meta or {}).items(),
                ],
            )
            store.conn.execute(
                "INSERT INTO run (id, config_json, structural_hash, created) VALUES (1, ?, ?, ?)",
                (config_json, structural_hash, time.time()),
            )
        return store

    @classmethod
    def open(cls, run_dir: str | Path, *, readonly: bool = False) -> RunStore:
        path = Path(run_dir) / STORE_FILE
        if not path.is_file():
            raise UserInputError(
                f"{run_dir}: no run store ({STORE_FILE}) here; start one with "
                f"`evomerge search EXPERIMENT.yaml --run-dir {run_dir}`"
            )
        store = cls(_connect(path, readonly=readonly), path, readonly=readonly)
        version = store._meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise UserInputError(
                f"{path}: store schema version {version} is not the supported {SCHEMA_VERSION}; "
                "use the evomerge version that wrote it"
            )
        if not readonly and not store._has_table("pending"):  # written before the table existed
            with store._tx():
                store.conn.execute(PENDING_DDL)
        return store

    def _has_table(self, name: str) -> bool:
        found = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return found is not None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self):
        return _Transaction(self.conn)

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def get_meta(self, key: str) -> str | None:
        """Free-form run facts outside the generation log (e.g. the experts' baseline scores)."""
        return self._meta(key)

    def get_json(self, key: str, default: Any = None) -> Any:
        """A meta value stored as JSON, decoded; ``default`` when the key is not there."""
        raw = self._meta(key)
        return default if raw is None else json.loads(raw)

    def search_baselines(self) -> dict[str, dict]:
        """The baselines as scored on the search's items, in their order (``evomerge.baselines``:
        label -> {fitness, error, scores, ...}); empty before they were scored."""
        return self.get_json("baselines", {})

    def set_meta(self, key: str, value: str) -> None:
        self.set_metas({key: value})

    def set_metas(self, values: dict[str, str]) -> None:
        """Several meta keys in one transaction: a kill leaves all of them or none."""
        with self._tx():
            self.conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    # ---- run ------------------------------------------------------------------------------------
    def config_json(self) -> str:
        return self.conn.execute("SELECT config_json FROM run WHERE id = 1").fetchone()[0]

    def structural_hash(self) -> str:
        return self.conn.execute("SELECT structural_hash FROM run WHERE id = 1").fetchone()[0]

    def update_config(self, config_json: str) -> None:
        """Record a non-structural change (e.g. a bigger budget) made at resume."""
        with self._tx():
            self.conn.execute("UPDATE run SET config_json = ? WHERE id = 1", (config_json,))

    # ---- the generation transaction -------------------------------------------------------------
    def commit_generation(
        self,
        checkpoint: Checkpoint,
        candidates: Sequence[CandidateRecord],
        results: Sequence[JobResult],
        archive: Sequence[ArchiveEntry],
        pending: Sequence[PendingRecord] = (),
    ) -> None:
        """One generation: its candidates and results, the checkpoint, the archive table and
        the batch asked ahead (``pending``, replacing the previous one), all or nothing."""
        if len(candidates) != len(results):
            raise ValueError("commit_generation: one result per candidate is required")
        with self._tx():
            self.conn.executemany(
                "INSERT INTO candidates (idx, generation, digest, genes_json, recipe_yaml,"
                " reused_from, meta_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        c.idx,
                        c.generation,
                        c.digest,
                        _dumps(list(c.genes)),
                        c.recipe_yaml,
                        c.reused_from,
                        _dumps(c.meta),
                    )
                    for c in candidates
                ],
            )
            self.conn.executemany(
                "INSERT INTO results (idx, status, fitness, objectives_json, scores_json,"
                " per_example_json, error, seconds, worker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_result_row(c.idx, r) for c, r in zip(candidates, results, strict=True)],
            )
            self.conn.execute(
                "INSERT INTO checkpoints (generation, driver_state, rng_state, n_candidates,"
                " n_evals, elapsed, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    checkpoint.generation,
                    checkpoint.driver_state,
                    checkpoint.rng_state,
                    checkpoint.n_candidates,
                    checkpoint.n_evals,
                    checkpoint.elapsed,
                    time.time(),
                ),
            )
            self.conn.execute(
                "DELETE FROM checkpoints WHERE generation <= ?",
                (checkpoint.generation - KEEP_CHECKPOINTS,),
            )
            self.conn.execute("DELETE FROM archive")
            self.conn.executemany(
                "INSERT INTO archive (rank, digest, idx, fitness) VALUES (?, ?, ?, ?)",
                [(a.rank, a.digest, a.idx, a.fitness) for a in archive],
            )
            self.conn.execute("DELETE FROM pending")
            self.conn.executemany(
                "INSERT INTO pending (idx, genes_json, meta_json, candidate) VALUES (?, ?, ?, ?)",
                [(p.idx, _dumps(list(p.genes)), _dumps(p.meta), p.candidate) for p in pending],
            )

    # ---- reading ----------------------------------------------------------------------------------
    def last_checkpoint(self) -> Checkpoint | None:
        row = self.conn.execute(
            "SELECT generation, driver_state, rng_state, n_candidates, n_evals, elapsed"
            " FROM checkpoints ORDER BY generation DESC LIMIT 1"
        ).fetchone()
        return Checkpoint(*row) if row else None

    def pending(self) -> list[PendingRecord]:
        """The batch asked ahead at the last commit, in ask order (empty when none, and in a
        store written before the table, opened read-only)."""
        if not self._has_table("pending"):
            return []
        rows = self.conn.execute(
            "SELECT idx, genes_json, meta_json, candidate FROM pending ORDER BY idx"
        ).fetchall()
        return [PendingRecord(i, tuple(json.loads(g)), json.loads(m), c) for i, g, m, c in rows]

    def trials(self, *, where: str = "", params: Sequence[Any] = ()) -> list[Trial]:
        rows = self.conn.execute(
            "SELECT c.idx, c.generation, c.digest, c.genes_json, c.recipe_yaml, c.reused_from,"
            " r.status, r.fitness, r.objectives_json, r.scores_json, r.error, r.seconds,"
            f" r.worker FROM candidates c JOIN results r ON r.idx = c.idx {where}"
            " ORDER BY c.idx",
            tuple(params),
        ).fetchall()
        return [_trial(row) for row in rows]

    def trial(self, idx: int) -> Trial | None:
        found = self.trials(where="WHERE c.idx = ?", params=(idx,))
        return found[0] if found else None

    def eval_result(self, idx: int) -> EvalResult | None:
        row = self.conn.execute(
            "SELECT per_example_json FROM results WHERE idx = ?", (idx,)
        ).fetchone()
        if not row or row[0] is None:
            return None
        return EvalResult.from_json(
            {k: {**v, "score": _none_to_nan(v["score"])} for k, v in json.loads(row[0]).items()}
        )

    def job_result(self, idx: int) -> JobResult:
        """The stored result of candidate ``idx`` as the evaluator returned it (for reuse)."""
        t = self.trial(idx)
        if t is None:
            raise KeyError(f"no candidate {idx} in {self.path}")
        return JobResult(
            digest=t.digest,
            status=t.status,
            fitness=t.fitness,
            objectives=t.objectives,
            result=self.eval_result(idx),
            error=t.error,
            seconds=t.seconds,
            worker=t.worker,
        )

    def scored_digests(self) -> dict[str, int]:
        """digest -> idx of the candidate that was actually evaluated for it."""
        rows = self.conn.execute(
            "SELECT digest, MIN(idx) FROM candidates WHERE reused_from IS NULL GROUP BY digest"
        ).fetchall()
        return {d: i for d, i in rows}

    def partial_idx(self) -> set[int]:
        """Candidates that racing stopped before every item (meta ``racing.items < of``)."""
        rows = self.conn.execute(
            "SELECT idx, meta_json FROM candidates WHERE meta_json LIKE '%\"racing\"%'"
        ).fetchall()
        out = set()
        for idx, meta in rows:
            r = json.loads(meta).get("racing")
            if r and r["items"] < r["of"]:
                out.add(idx)
        return out

    def item_evals(self) -> int:
        """Item evaluations so far: per evaluated candidate, the items racing scored it on
        (meta ``racing.items``), else the per-example values of its result."""
        rows = self.conn.execute(
            "SELECT c.meta_json, r.per_example_json FROM candidates c JOIN results r"
            " ON r.idx = c.idx WHERE c.reused_from IS NULL AND c.digest != ''"
        ).fetchall()
        total = 0
        for meta, per_example in rows:
            r = json.loads(meta).get("racing")
            if r:
                total += int(r["items"])
            elif per_example:
                total += sum(
                    len(v.get("per_example", ())) for v in json.loads(per_example).values()
                )
        return total

    def archive(self) -> list[ArchiveEntry]:
        rows = self.conn.execute(
            "SELECT rank, digest, idx, fitness FROM archive ORDER BY rank"
        ).fetchall()
        return [ArchiveEntry(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT COUNT(*), SUM(c.reused_from IS NULL), SUM(r.status = 'FAIL'),"
            " MAX(c.generation) FROM candidates c JOIN results r ON r.idx = c.idx"
        ).fetchone()
        return {
            "candidates": row[0] or 0,
            "evaluated": row[1] or 0,
            "failed": row[2] or 0,
            "generations": (row[3] + 1) if row[3] is not None else 0,
        }


def refuse_existing(run_dir: Path) -> None:
    """A new search never writes into a folder that already holds a run."""
    if (Path(run_dir) / STORE_FILE).exists():
        raise UserInputError(
            f"{run_dir}: already holds a run; continue it with `evomerge resume {run_dir}` "
            "or pick another --run-dir"
        )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        # WAL: readers (evomerge status) and the writer never block each other. NORMAL sync is
        # durable against a killed process (only an OS crash may drop the last transaction).
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _result_row(idx: int, r: JobResult) -> tuple:
    res = r.result
    return (
        idx,
        r.status,
        _nan_to_none(r.fitness),
        _dumps(list(r.objectives)),
        _dumps(res.scores if res is not None else {}),
        _dumps(res.to_json()) if res is not None else None,
        r.error,
        float(r.seconds),
        r.worker,
    )


def _trial(row: tuple) -> Trial:
    (idx, gen, digest, genes, recipe, reused, status, fit, objs, scores, err, secs, worker) = row
    return Trial(
        idx=idx,
        generation=gen,
        digest=digest,
        genes=tuple(json.loads(genes)),
        recipe_yaml=recipe,
        reused_from=reused,
        status=status,
        fitness=_none_to_nan(fit),
        objectives=tuple(_none_to_nan(v) for v in json.loads(objs)),
        scores={k: _none_to_nan(v) for k, v in json.loads(scores).items()},
        error=err,
        seconds=secs,
        worker=worker,
    )
