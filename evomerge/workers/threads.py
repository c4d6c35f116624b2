"""How many torch threads a worker runs: never more than the cores it can have to itself.

torch's default is one intra-op thread per core, and OpenMP's threads wait for each other at
every parallel region. When another process holds a core, the thread that shares it is
descheduled and the others spin at the barrier: a serial search on 2 cores beside one busy
process ran 10–13x slower with torch's default (2 threads) than with 1. So the rule is:

- ``evaluation.threads`` set in the experiment: exactly that many (a warning if it exceeds the
  cores this worker can have).
- otherwise ``OMP_NUM_THREADS`` in the serial evaluator's environment, as torch itself reads
  it: the standard way to pin a process's threads, e.g. for several searches started on one
  machine at the same moment (each would otherwise see every core free and take them all).
- otherwise, the serial evaluator takes the cores that are free when the search starts: the
  cores this process may run on (affinity and cgroup quota), less those other processes keep
  busy (sampled from ``/proc/stat`` over a quarter second), at least 1.
- a Ray worker takes ``floor(cpus_per_worker)`` (at least 1): Ray reserves that many CPUs for
  it, so workers × threads never exceed the CPUs Ray was given.

Interop threads are set to 1: evaluation runs one model at a time, and more interop threads
would only compete with the intra-op ones. The choice is fixed for the worker's life; the
numerical results do not depend on it for the merge (the fused kernel's sums are exact), and
the fitness's matmuls round the same on one machine for a given thread count.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadChoice:
    intra: int
    interop: int
    reason: str

    def describe(self) -> str:
        return f"{self.intra} torch thread(s), {self.interop} interop ({self.reason})"


def available_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """cgroup v2 ``cpu.max`` ("max 100000" or "200000 100000") or v1 cfs quota/period."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def busy_cores(window_s: float = 0.25) -> float:
    """Cores kept busy by other processes now (we sleep while sampling), from /proc/stat; the
    1-minute load average where /proc/stat cannot be read."""
    first = _cpu_times()
    if first is None:
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    time.sleep(window_s)
    second = _cpu_times()
    if second is None:
        return 0.0
    busy = second[0] - first[0]
    total = second[1] - first[1]
    if total <= 0:
        return 0.0
    return (os.cpu_count() or 1) * busy / total


def _cpu_times() -> tuple[int, int] | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def choose_serial(requested: int | None) -> ThreadChoice:
    cores = available_cores()
    if requested is not None:
        _warn_if_over(requested, cores, "evaluation.threads")
        return ThreadChoice(requested, 1, "evaluation.threads")
    env = _omp_num_threads()
    if env is not None:
        _warn_if_over(env, cores, "OMP_NUM_THREADS")
        return ThreadChoice(env, 1, "OMP_NUM_THREADS")
    busy = busy_cores()
    free = max(1, min(cores, round(cores - busy)))
    reason = f"auto: {cores} core(s)" + (f", {busy:.1f} busy elsewhere" if free < cores else "")
    return ThreadChoice(free, 1, reason)


def _omp_num_threads() -> int | None:
    """OMP_NUM_THREADS's first level ("4" or "4,2"), None when unset or not a positive int."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def choose_ray(requested: int | None, cpus_per_worker: float) -> ThreadChoice:
    if requested is not None:
        return ThreadChoice(requested, 1, "evaluation.threads")
    n = max(1, math.floor(cpus_per_worker))
    return ThreadChoice(n, 1, f"auto: cpus_per_worker {cpus_per_worker:g}")


def _warn_if_over(threads: int, cores: int, field: str) -> None:
    if threads > cores:
        warnings.warn(
            f"{field} = {threads} exceeds the {cores} core(s) this process may use; "
            "threads will contend (lower it, or leave it unset for the automatic choice)",
            stacklevel=3,
        )


def apply(choice: ThreadChoice) -> None:
    """Set torch's threads. Interop threads can be set once per process, before any parallel
    work: a later call keeps what is there."""
    import torch

    torch.set_num_threads(choice.intra)
    if torch.get_num_interop_threads() != choice.interop:
        try:
            torch.set_num_interop_threads(choice.interop)
        except RuntimeError:
            pass
