"""Polling a running search's store and killing it mid-generation (the SIGKILL resume tests)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "evomerge.cli", *args]


def committed_generation(run_dir: Path) -> int:
    """The last committed generation, -1 before the first (also while the store file exists but
    its tables are still being created: a poll may read it at any moment)."""
    db = run_dir / "store.sqlite"
    if not db.exists():
        return -1
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT MAX(generation) FROM checkpoints").fetchone()
    except sqlite3.OperationalError:
        return -1
    return -1 if row[0] is None else row[0]


def kill_at_random(
    cmd: list[str],
    run_dir: Path,
    rng: random.Random,
    env: dict[str, str],
    *,
    within_s: float,
    deadline_s: float,
) -> bool:
    """Start ``cmd``; SIGKILL it up to ``within_s`` after it commits a new generation (so it
    lands inside the next one). True if it was killed, False if it finished first."""
    before = committed_generation(run_dir)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + deadline_s
    while proc.poll() is None and time.monotonic() < deadline:
        if committed_generation(run_dir) > before:
            time.sleep(rng.uniform(0.0, within_s))
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.stderr.read().decode()
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def kill_fork_at_random(
    target: Callable[[], object],
    run_dir: Path,
    rng: random.Random,
    *,
    within_s: float,
    deadline_s: float,
) -> bool:
    """``kill_at_random`` for ``target`` run in a forked child of this process: no interpreter
    start and no imports, so a kill costs the search's time only. True if it was killed."""
    import multiprocessing

    before = committed_generation(run_dir)
    proc = multiprocessing.get_context("fork").Process(target=target, daemon=True)
    proc.start()
    deadline = time.monotonic() + deadline_s
    while proc.is_alive() and time.monotonic() < deadline:
        if committed_generation(run_dir) > before:
            time.sleep(rng.uniform(0.0, within_s))
            break
        time.sleep(0.05)
    if not proc.is_alive():
        proc.join()
        assert proc.exitcode == 0, f"the search exited with {proc.exitcode}"
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    return True
