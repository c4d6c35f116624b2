"""slurm/search.sbatch: syntax, and end to end on a fake two-node allocation.

The SLURM controller is the one part that cannot exist here; ``tests/helpers/fake_slurm`` stands
in for srun/scontrol and gives each fake node its own network namespace (its own address on a
private bridge, nothing reachable outside this machine), PID, UTS and mount namespaces, so the
script's real ``ray start`` / ``ray symmetric-run`` commands build a real two-node Ray cluster
and the real ``evomerge search`` / ``resume`` runs on it.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.fake_slurm import harness
from tests.helpers.kill_resume import committed_generation

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "slurm" / "search.sbatch"
FAKES = ROOT / "tests" / "helpers" / "fake_slurm"


@pytest.mark.parametrize(
    "script", [SBATCH, FAKES / "srun", FAKES / "enter", FAKES / "scontrol"], ids=lambda p: p.name
)
def test_scripts_pass_bash_n(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_sbatch_header_asks_for_requeue_and_a_warning_signal():
    head = [line for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --requeue" in head
    assert any(line.startswith("#SBATCH --signal=B:TERM@") for line in head)


def _why_skip() -> str | None:
    why = harness.available()
    if why:
        return why
    for mod in ("evomerge.cli", "evomerge.merge.engine"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} has not landed yet"
    if shutil.which("evomerge") is None and not (Path(sys.executable).parent / "evomerge").exists():
        return "the evomerge console script is not installed"
    return None


def _store(run_dir: Path):
    with sqlite3.connect(f"file:{run_dir / 'store.sqlite'}?mode=ro", uri=True) as conn:
        trials = conn.execute(
            "SELECT c.idx, c.digest, r.status, r.fitness FROM candidates c "
            "JOIN results r USING (idx) ORDER BY idx"
        ).fetchall()
        archive = conn.execute("SELECT rank, digest, idx FROM archive ORDER BY rank").fetchall()
        gen = conn.execute("SELECT MAX(generation) FROM checkpoints").fetchone()[0]
    return trials, archive, -1 if gen is None else gen


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    why = _why_skip()
    if why:
        pytest.skip(why)
    from tests.helpers.search_fixtures import make_family

    tmp = tmp_path_factory.mktemp("slurm_exp")
    return tmp, make_family(tmp / "models", n_experts=2, layers=2, hidden=16)


@pytest.fixture(scope="module")
def experiment(family):
    from tests.helpers.search_fixtures import write_experiment

    tmp, fam = family
    return write_experiment(tmp, fam, max_evals=8, popsize=4)


@pytest.fixture(scope="module")
def long_experiment(family):
    """Six generations: long enough that a SIGTERM after the first lands mid-run."""
    from tests.helpers.search_fixtures import write_experiment

    tmp, fam = family
    return write_experiment(tmp, fam, max_evals=24, popsize=4, name="long.yaml")


ENV = {
    "EVOMERGE_BIN": str(Path(sys.executable).parent / "evomerge"),
    "RAY_BIN": str(Path(sys.executable).parent / "ray"),
    "EVOMERGE_PYTHON": sys.executable,
    "EVOMERGE_OBJECT_STORE_BYTES": str(100 * 2**20),
    "OMP_NUM_THREADS": "1",
    # worker raylets notice the head is gone after 5 s instead of 60 (teardown time only)
    "RAY_gcs_rpc_server_reconnect_timeout_s": "5",
}


def _run(alloc, exp, run_dir, restart=0, launch="auto", timeout=300) -> tuple[int, str]:
    log = alloc.root / f"batch-{launch}-{restart}.out"
    p = alloc.start_batch(
        SBATCH,
        [str(exp), str(run_dir)],
        restart_count=restart,
        extra_env={**ENV, "EVOMERGE_RAY_LAUNCH": launch, "EVOMERGE_RAY_TOKEN_DIR": str(alloc.root)},
        log=log,
    )
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = -9
    alloc.end_job()
    return rc, log.read_text(errors="replace")


def _serial_reference(exp: Path, run_dir: Path):
    """The same search in process, serial: what every cluster run must reproduce."""
    import torch

    from evomerge import search_cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the arithmetic of 1-CPU Ray workers
    try:
        assert search_cli.search(exp, run_dir, workers=1) == 0
    finally:
        torch.set_num_threads(threads)
    return _store(run_dir)


def _same_search(a, b) -> None:
    assert [t[:3] for t in a[0]] == [t[:3] for t in b[0]]  # candidates, digests, status
    assert [t[3] for t in a[0]] == pytest.approx([t[3] for t in b[0]], rel=1e-6)
    assert a[1] == b[1]  # the archive


@pytest.mark.slow
def test_sbatch_runs_the_search_on_the_allocation(experiment, tmp_path):
    """Default launch (symmetric-run where Ray has it): the search runs on the two-node Ray
    cluster and finds what the serial search finds."""
    run_dir = tmp_path / "run"
    with harness.FakeAllocation(tmp_path / "slurm", 2) as alloc:
        rc, out = _run(alloc, experiment, run_dir)
    assert rc == 0, out[-3000:]
    assert "new search" in out and "ray launch: symmetric" in out
    got = _store(run_dir)
    assert len(got[0]) == 8 and all(t[2] == "OK" for t in got[0])
    assert got[1] and (run_dir / "archive" / got[1][0][1]).is_dir()
    _same_search(got, _serial_reference(experiment, tmp_path / "serial"))


@pytest.mark.slow
def test_preempted_job_requeues_and_resumes_exactly(long_experiment, tmp_path):
    """Explicit head + workers; SIGTERM mid-run (the pre-emption warning): the search commits
    its generation, the job requeues itself, and the restarted job resumes the run from its
    store and ends with the same search as an uninterrupted one."""
    experiment = long_experiment
    run_dir = tmp_path / "run"
    env = {**ENV, "EVOMERGE_RAY_LAUNCH": "explicit"}
    with harness.FakeAllocation(tmp_path / "slurm", 2) as alloc:
        env["EVOMERGE_RAY_TOKEN_DIR"] = str(alloc.root)
        log = alloc.root / "preempt.out"
        p = alloc.start_batch(SBATCH, [str(experiment), str(run_dir)], log=log, extra_env=env)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and p.poll() is None:
            if committed_generation(run_dir) >= 0:
                break
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)  # what --signal=B:TERM@180 delivers to the batch shell
        assert p.wait(timeout=240) == 0, log.read_text(errors="replace")[-3000:]
        alloc.end_job()
        assert alloc.requeued() == ["4242"]
        assert len(_store(run_dir)[0]) < 24  # stopped early, at a committed generation
        rc, out = _run(alloc, experiment, run_dir, restart=1, launch="explicit")
    assert rc == 0 and "resuming" in out, out[-3000:]
    _same_search(_store(run_dir), _serial_reference(experiment, tmp_path / "serial"))


def test_sbatch_stops_at_once_when_the_ray_head_exits(experiment, tmp_path):
    """Explicit launch whose head step dies at start (here a `ray` that exits 1): the job stops
    with one line naming the head instead of retrying for minutes, and writes no run."""
    fake_ray = tmp_path / "ray"
    fake_ray.write_text("#!/usr/bin/env bash\necho 'ray: cannot start on this node' >&2\nexit 1\n")
    fake_ray.chmod(0o755)
    run_dir = tmp_path / "run"
    env = {**ENV, "RAY_BIN": str(fake_ray), "EVOMERGE_RAY_LAUNCH": "explicit"}
    with harness.FakeAllocation(tmp_path / "slurm", 2) as alloc:
        env["EVOMERGE_RAY_TOKEN_DIR"] = str(alloc.root)
        log = alloc.root / "headfail.out"
        t0 = time.monotonic()
        p = alloc.start_batch(SBATCH, [str(experiment), str(run_dir)], log=log, extra_env=env)
        try:
            rc = p.wait(timeout=180)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = -9
        alloc.end_job()
    out = log.read_text(errors="replace")
    assert rc != 0 and time.monotonic() - t0 < 120, out[-3000:]  # 60 retries would take ~25 min
    assert "the Ray head on" in out and "exited before the cluster was up" in out, out[-3000:]
    assert "cannot start on this node" in out  # the head's own output is shown above the line
    assert not (run_dir / "store.sqlite").exists()
