"""Watch a command from outside: its wall time, the memory of its whole process tree, and the
bytes it writes under one folder. Used by vs_mergekit_evolve.py to measure both tools alike.

Disk: the folder is walked every ``interval`` seconds. ``peak`` is the most bytes present at
once; ``total`` sums, over every file ever seen, the largest size it was seen at (a candidate's
merged folder that lives a second is caught if it lives longer than the interval; the count of
such folders is checked against the number of candidates by the caller). Memory: the sum of RSS
over the command and all its descendants (Ray's raylet, GCS and worker processes included: Ray
starts them as children), and the largest single process.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class Watched:
    wall_s: float = 0.0
    rc: int = 0
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    disk_peak: int = 0
    files_seen: dict[str, int] = field(default_factory=dict)  # path -> largest size seen
    rss_tree_peak: int = 0
    rss_proc_peak: int = 0

    @property
    def disk_total(self) -> int:
        return sum(self.files_seen.values())

    def first_time(self, needle: str) -> float | None:
        return next((t for t, line in self.lines if needle in line), None)

    def last_time(self, needle: str) -> float | None:
        return next((t for t, line in reversed(self.lines) if needle in line), None)


def _disk(root: Path, seen: dict[str, int]) -> int:
    now = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            try:
                size = os.lstat(p).st_size
            except FileNotFoundError:  # deleted between the listing and the stat
                continue
            now += size
            if size > seen.get(p, -1):
                seen[p] = size
    return now


def _rss(proc: psutil.Process) -> tuple[int, int]:
    total = largest = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total, largest = total + rss, max(largest, rss)
    return total, largest


def run_watched(
    cmd: list[str], *, env: dict[str, str], watch: Path, log: Path, interval: float = 0.05
) -> Watched:
    """Run ``cmd`` in the folder ``watch`` to completion; its stdout+stderr go to ``log`` (keep
    it outside ``watch``) and, timestamped, to ``Watched.lines``."""
    out = Watched()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=watch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    ps = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            out.disk_peak = max(out.disk_peak, _disk(watch, out.files_seen))
            tree, largest = _rss(ps)
            out.rss_tree_peak = max(out.rss_tree_peak, tree)
            out.rss_proc_peak = max(out.rss_proc_peak, largest)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open(log, "w") as fh:
        for line in proc.stdout:
            out.lines.append((time.perf_counter() - t0, line.rstrip("\n")))
            fh.write(line)
    out.rc = proc.wait()
    out.wall_s = time.perf_counter() - t0
    done.set()
    sampler.join()
    out.disk_peak = max(out.disk_peak, _disk(watch, out.files_seen))
    return out
