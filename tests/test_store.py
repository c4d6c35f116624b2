"""The run store: one transaction per generation, NaN round trip, WAL reads while writing."""

from __future__ import annotations

import math
import pickle
import sqlite3

import pytest

from evomerge.archive import rank_top_k
from evomerge.errors import UserInputError
from evomerge.results import OK, EvalResult, JobResult, TaskScore
from evomerge.store import ArchiveEntry, CandidateRecord, Checkpoint, RunStore


def _gen(gen: int, start: int, fits: list[float]):
    cands, results = [], []
    for k, f in enumerate(fits):
        idx = start + k
        d = f"d{idx}"
        cands.append(CandidateRecord(idx, gen, d, (0.1 * idx, 1 / 3), f"merge_method: x{idx}\n"))
        if math.isnan(f):
            results.append(JobResult.failed(d, "boom", 0.5, "w0"))
        else:
            res = EvalResult({"t": TaskScore.from_examples([1.0, 0.0, f])})
            results.append(JobResult(d, OK, f, (f,), res, None, 0.25, "w0"))
    cp = Checkpoint(
        gen,
        pickle.dumps({"g": gen}),
        pickle.dumps("rng"),
        start + len(fits),
        start + len(fits),
        1.5 * (gen + 1),
    )
    return cp, cands, results


def test_commit_and_read_back(tmp_path):
    store = RunStore.create(tmp_path, '{"a": 1}', "h" * 64)
    cp, cands, results = _gen(0, 0, [0.5, math.nan, 0.75])
    top = rank_top_k([(r.fitness, c.idx, c.digest) for c, r in zip(cands, results, strict=True)], 2)
    store.commit_generation(cp, cands, results, top)
    trials = store.trials()
    assert [t.idx for t in trials] == [0, 1, 2]
    assert trials[0].genes == (0.0, 1 / 3)  # exact float round trip
    assert math.isnan(trials[1].fitness) and trials[1].status == "FAIL"
    assert trials[1].error == "boom"
    assert trials[2].scores == {"t": pytest.approx((1 + 0.75) / 3)}
    assert store.eval_result(2).tasks["t"].per_example == (1.0, 0.0, 0.75)
    assert store.eval_result(1) is None
    assert [e.digest for e in store.archive()] == ["d2", "d0"]
    assert pickle.loads(store.last_checkpoint().driver_state) == {"g": 0}
    assert store.counts() == {"candidates": 3, "evaluated": 3, "failed": 1, "generations": 1}
    jr = store.job_result(2)
    assert jr.fitness == 0.75 and jr.result.tasks["t"].per_example == (1.0, 0.0, 0.75)
    store.close()


def test_generation_is_atomic(tmp_path):
    store = RunStore.create(tmp_path, "{}", "h")
    cp, cands, results = _gen(0, 0, [0.5])
    store.commit_generation(cp, cands, results, [])
    cp1, cands1, results1 = _gen(1, 1, [0.6, 0.7])
    bad = [cands1[0], cands1[0]]  # duplicate idx: the INSERT fails mid-transaction
    with pytest.raises(sqlite3.IntegrityError):
        store.commit_generation(cp1, bad, results1, [])
    assert store.counts()["candidates"] == 1
    assert store.last_checkpoint().generation == 0
    store.commit_generation(cp1, cands1, results1, [])
    assert store.last_checkpoint().generation == 1


def test_old_checkpoints_pruned_and_reader_sees_commits(tmp_path):
    store = RunStore.create(tmp_path, "{}", "h")
    reader = RunStore.open(tmp_path, readonly=True)
    start = 0
    for g in range(6):
        cp, cands, results = _gen(g, start, [0.1 * g])
        store.commit_generation(cp, cands, results, [ArchiveEntry(0, f"d{start}", start, 0.1)])
        start += 1
        assert reader.counts()["candidates"] == start  # a WAL reader sees each commit
    n = store.conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
    assert n == 3
    with pytest.raises(sqlite3.OperationalError):
        reader.conn.execute("DELETE FROM candidates")
    reader.close()
    store.close()


def test_create_twice_and_open_missing_are_user_errors(tmp_path):
    RunStore.create(tmp_path / "r", "{}", "h").close()
    with pytest.raises(UserInputError, match="evomerge resume"):
        RunStore.create(tmp_path / "r", "{}", "h")
    with pytest.raises(UserInputError, match="no run store"):
        RunStore.open(tmp_path / "nothing")


def test_rank_top_k_ties_and_duplicates():
    rows = [(0.5, 3, "a"), (0.9, 5, "b"), (0.9, 4, "c"), (math.nan, 0, "z"), (0.5, 1, "a")]
    top = rank_top_k(rows, 3)
    assert [(e.digest, e.idx) for e in top] == [("c", 4), ("b", 5), ("a", 1)]
