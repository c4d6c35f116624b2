"""Exact resume, end to end: real CLI subprocesses, real merges of tiny Llamas, real SQLite.

The same search is run once uninterrupted, and once killed with SIGKILL at several random
moments and resumed each time; both must end with identical candidate sequences, scores and
archive (table and model bytes). A resume with a changed structural config is refused.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.helpers.kill_resume import cli, kill_at_random
from tests.helpers.search_fixtures import make_family, write_experiment

pytestmark = pytest.mark.timeout(400)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


_cli = cli


def _snapshot(run_dir: Path):
    with sqlite3.connect(f"file:{run_dir / 'store.sqlite'}?mode=ro", uri=True) as conn:
        trials = conn.execute(
            "SELECT c.idx, c.generation, c.digest, c.genes_json, c.reused_from, r.status,"
            " r.fitness, r.scores_json FROM candidates c JOIN results r USING (idx) ORDER BY idx"
        ).fetchall()
        archive = conn.execute("SELECT rank, digest, idx, fitness FROM archive").fetchall()
    files = {}
    for p in sorted((run_dir / "archive").rglob("*.safetensors")):
        files[str(p.relative_to(run_dir))] = p.read_bytes()
    return trials, archive, files


def _kill_at_random(cmd: list[str], run_dir: Path, rng: random.Random) -> bool:
    # land anywhere inside the next generation (~0.3 s)
    return kill_at_random(cmd, run_dir, rng, ENV, within_s=0.25, deadline_s=120)


def kill_and_resume_to_the_end(exp: Path, run_dir: Path, rng: random.Random) -> None:
    """Search ``exp`` into ``run_dir``, SIGKILL it and each resume at random moments (at most
    8 kills), then resume to the end; at least 2 kills must have landed."""
    running = _kill_at_random(_cli("search", str(exp), "--run-dir", str(run_dir)), run_dir, rng)
    kills = int(running)
    while running and kills < 8:
        running = _kill_at_random(_cli("resume", str(run_dir)), run_dir, rng)
        kills += running
    if running:
        last = subprocess.run(_cli("resume", str(run_dir)), env=ENV, capture_output=True, text=True)
        assert last.returncode == 0, last.stderr
    assert kills >= 2, "the search finished before it could be killed twice"


# M2N2 (steady state, archive replacement, per-example rows) asks 5 children per generation.
DRIVERS = {
    "cma_es": dict(max_evals=60, popsize=5),
    "m2n2": dict(max_evals=60, popsize=5, options="{archive_size: 6, batch_size: 5}"),
}


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_killed_and_resumed_equals_uninterrupted(tmp_path, driver):
    family = make_family(tmp_path / "models")
    exp = write_experiment(tmp_path, family, driver=driver, **DRIVERS[driver])
    full = tmp_path / "full"
    done = subprocess.run(
        _cli("search", str(exp), "--run-dir", str(full)), env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "winner" in done.stdout

    killed = tmp_path / "killed"
    kill_and_resume_to_the_end(exp, killed, random.Random(1234))

    a, b = _snapshot(full), _snapshot(killed)
    assert a[0] == b[0]  # candidates, genes, digests, statuses, scores
    assert a[1] == b[1] and a[1]  # archive table
    assert a[2] == b[2] and a[2]  # archived model bytes


def test_resume_refuses_a_structural_change(tmp_path):
    family = make_family(tmp_path / "models")
    exp = write_experiment(tmp_path, family, max_evals=5, popsize=5)
    run = tmp_path / "run"
    first = subprocess.run(
        _cli("search", str(exp), "--run-dir", str(run)), env=ENV, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    changed = write_experiment(
        tmp_path, family, max_evals=5, popsize=5, seed=99, name="changed.yaml"
    )
    res = subprocess.run(
        _cli("resume", str(run), "--config", str(changed)), env=ENV, capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "structural config changed (space, seed)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1  # one line, no traceback
    more = write_experiment(tmp_path, family, max_evals=10, popsize=5, name="more.yaml")
    ok = subprocess.run(
        _cli("resume", str(run), "--config", str(more)), env=ENV, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert _snapshot(run)[0][-1][0] == 9  # a bigger budget continues the same search
