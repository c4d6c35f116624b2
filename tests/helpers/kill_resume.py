"""Polling a running search's store and killing it mid-generation (the SIGKILL resume tests)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
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
