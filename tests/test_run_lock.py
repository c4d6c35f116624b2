"""One writer per run folder, with real CLI processes: a resume or search started while another
writer runs on the folder is refused at once (exit 2, one line naming the holder's PID and
host, the store untouched); status and export keep working; the lock dies with its process
(SIGKILL), so the next resume proceeds."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evomerge.io.lock import FileLock, probe
from tests.helpers.search_fixtures import make_family, write_experiment

pytestmark = pytest.mark.timeout(300)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "evomerge.cli", *args]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), env=ENV, capture_output=True, text=True, timeout=240)


def evaluated(run_dir: Path) -> int:
    db = run_dir / "store.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def start_writer(args: list[str], run_dir: Path) -> subprocess.Popen:
    """Start a search/resume and return once it has committed a new generation."""
    before = evaluated(run_dir)
    proc = subprocess.Popen(cli(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while evaluated(run_dir) <= before:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the writer committed nothing in 120 s"
        time.sleep(0.1)
    return proc


def store_bytes(run_dir: Path) -> dict[str, bytes]:
    """The durable bytes: the database and its WAL (``-shm`` is SQLite's shared-memory index,
    rebuilt by every reader after a crash, ``evomerge status`` included)."""
    names = ("store.sqlite", "store.sqlite-wal")
    return {n: (run_dir / n).read_bytes() for n in names if (run_dir / n).exists()}


def assert_refused(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # one line, no traceback
    for n in needles:
        assert n in res.stderr, res.stderr


def test_second_writer_is_refused_and_readers_keep_working(tmp_path):
    from tests.test_search_start import invoke, refused

    family = make_family(tmp_path / "models")
    exp = write_experiment(tmp_path, family, max_evals=100000, popsize=5)
    run = tmp_path / "run"
    search = start_writer(["search", str(exp), "--run-dir", str(run)], run)
    try:
        holder = f"PID {search.pid} on host {socket.gethostname()}"
        # the user's view in a real process once, then the CLI in process (no torch import each)
        assert_refused(run_cli("resume", str(run)), holder, "in use")
        refused(invoke("search", str(exp), "--run-dir", str(run)), "already holds a run")
        assert invoke("status", str(run)).exit_code == 0
        assert invoke("export", str(run), "--out", str(tmp_path / "w.yaml")).exit_code == 0
        assert invoke("report", str(run), "--out", str(tmp_path / "rep")).exit_code == 0
        assert search.poll() is None  # the refusals did not disturb the search
    finally:
        search.kill()
        search.wait()
    # The lock died with the process: a resume proceeds, and a second one is refused.
    first = start_writer(["resume", str(run)], run)
    try:
        refused(invoke("resume", str(run)), f"PID {first.pid} on host")
    finally:
        first.send_signal(signal.SIGTERM)  # stops after the generation in flight
        assert first.wait(timeout=120) == 0
    rows = evaluated(run)
    with sqlite3.connect(run / "store.sqlite") as conn:
        idx = [r[0] for r in conn.execute("SELECT idx FROM candidates ORDER BY idx")]
    assert idx == list(range(rows))  # one writer at a time: no gap, no duplicate
    assert not [p for p in (run / "archive").iterdir() if p.name.startswith(".")]


def test_lock_dies_with_its_process_and_names_its_holder(tmp_path):
    from tests.test_search_start import invoke, refused

    path = tmp_path / "run.lock"  # as a search holds it before its store exists
    code = (
        "import sys, time; from evomerge.io.lock import FileLock; "
        f"l = FileLock({str(path)!r}); assert l.try_acquire(); print('held', flush=True); "
        "time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        mine = FileLock(path)
        assert probe(path) is True and not mine.try_acquire()
        assert mine.holder() == f"PID {holder.pid} on host {socket.gethostname()}"
        refused(invoke("resume", str(tmp_path)), f"in use by PID {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert probe(path) is False and mine.try_acquire()
    # POSIX locks are per process: a second lock on the same file in this process is refused,
    # and probing it does not drop ours.
    assert not FileLock(path).try_acquire() and probe(path) is True
    mine.release()
    assert probe(path) is False
