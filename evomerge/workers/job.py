"""The per-candidate job shared by the serial and the Ray evaluator: materialize, score, report.

``run_job`` never raises for a bad candidate: an exception (OOM included), a timeout or a NaN
score comes back as a FAIL ``JobResult`` carrying the error text, so the search records it and
goes on (failures are data). Two things make a score independent of where and when it ran:

* global RNGs (python, numpy, torch) are seeded from (experiment seed, recipe digest) for the
  job and restored afterwards, so an evaluation that draws from them is reproducible and does
  not disturb a driver that keeps its stream in the global numpy RNG (pycma);
* the timeout is a SIGALRM interval timer when the job runs on the main thread (the serial
  evaluator, a Ray actor's default executor); elsewhere it is checked after the job ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np

from evomerge.errors import FitnessReturnError
from evomerge.recipe import Recipe
from evomerge.results import OK, EvalResult, JobResult


class JobTimeout(Exception):
    """Raised inside a job when its time is up."""


class WorkerContext(Protocol):
    """What a worker holds resident: the materializer (experts + model), tokenizer, fitness."""

    worker: str
    seed: int
    tokenizer: Any

    def materialize(self, recipe: Recipe) -> Any:
        """The resident model holding ``recipe`` (not merged again when it already does)."""

    def score(self, model: Any, tokenizer: Any) -> tuple[EvalResult, float, tuple[float, ...]]:
        """(result, aggregate fitness, objectives); with ``items`` (racing) only those items."""

    # ``space`` (the run's search space) is read only by a wants job (``run_wants_job``);
    # ``use_split(split)`` (optional) switches the items scored, e.g. to the validation split


def job_seed(seed: int, digest: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{digest}".encode()).digest()[:8], "little") >> 1


def run_job(
    ctx: WorkerContext,
    recipe: Recipe,
    *,
    timeout_s: float | None,
    items: dict[str, list[int]] | None = None,
) -> JobResult:
    """Score ``recipe``; ``items`` (entry label -> item positions) scores only those items
    (racing), seeded exactly as the whole evaluation is."""
    digest = recipe.digest()
    t0 = time.perf_counter()
    try:
        with _seeded(job_seed(ctx.seed, digest)), _deadline(timeout_s):
            model = ctx.materialize(recipe)
            scored = (
                ctx.score(model, ctx.tokenizer, items) if items else ctx.score(model, ctx.tokenizer)
            )
            result, fitness, objectives = scored
    except JobTimeout:
        return JobResult.failed(
            digest,
            f"timed out after {timeout_s:g} s (evaluation.timeout_s)",
            time.perf_counter() - t0,
            ctx.worker,
        )
    except Exception as err:  # noqa: BLE001 - failures are data
        return JobResult.failed(digest, _describe(err), time.perf_counter() - t0, ctx.worker)
    seconds = time.perf_counter() - t0
    if timeout_s is not None and seconds > timeout_s:
        return JobResult.failed(
            digest, f"took {seconds:.1f} s > timeout {timeout_s:g} s", seconds, ctx.worker
        )
    bad = [v for v in (fitness, *objectives) if not _finite(v)]
    if bad:
        return JobResult(
            digest=digest,
            status="FAIL",
            fitness=math.nan,
            objectives=objectives,
            result=result,
            error=_not_finite(result),
            seconds=seconds,
            worker=ctx.worker,
        )
    return JobResult(
        digest=digest,
        status=OK,
        fitness=float(fitness),
        objectives=tuple(float(v) for v in objectives),
        result=result,
        seconds=seconds,
        worker=ctx.worker,
    )


def run_wants_job(
    ctx: WorkerContext, recipe: Recipe, wants: Mapping[str, Any], *, timeout_s: float | None
) -> JobResult:
    """What the candidate of ``recipe`` wants besides its fitness (``workers.wants``), computed
    over the worker's search space (``ctx.space``), with the fitness job's seeding, timeout and
    failure handling; the fitness is not scored (NaN)."""
    from evomerge.workers.wants import compute_wants

    digest = recipe.digest()
    t0 = time.perf_counter()
    # a gradient job may load its own weights into a model of the worker: whatever the
    # resident model held is no longer trusted to be the last candidate merged
    getattr(ctx, "forget_resident", lambda: None)()
    try:
        with _seeded(job_seed(ctx.seed, digest)), _deadline(timeout_s):
            wanted = compute_wants(ctx.space, wants)
    except JobTimeout:
        why = f"timed out after {timeout_s:g} s (evaluation.timeout_s)"
        return JobResult.failed(digest, why, time.perf_counter() - t0, ctx.worker)
    except Exception as err:  # noqa: BLE001 - failures are data
        return JobResult.failed(digest, _describe(err), time.perf_counter() - t0, ctx.worker)
    seconds = time.perf_counter() - t0
    return JobResult(digest, OK, math.nan, seconds=seconds, worker=ctx.worker, wanted=wanted)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _not_finite(result: EvalResult) -> str:
    """Which task scores made the fitness NaN or infinite, and what a task must give."""
    bad = sorted(k for k, v in result.scores.items() if not _finite(v))
    scores = {k: round(v, 6) for k, v in result.scores.items()}
    which = f"task {', '.join(map(repr, bad))} scored {result.scores[bad[0]]}" if bad else ""
    return (
        f"fitness is not finite: {which or 'no task gave a score'} (task scores {scores}); "
        "every task must give a finite score"
    )


def _describe(err: BaseException) -> str:
    """The error and the innermost frames: enough to debug, short enough to store per row."""
    if isinstance(err, FitnessReturnError):  # its message says it all; frames are evomerge's
        return str(err)
    frames = traceback.extract_tb(err.__traceback__)[-3:]
    where = " <- ".join(
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames)
    )
    return f"{type(err).__name__}: {err}" + (f" [at {where}]" if where else "")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    import torch

    py_state, np_state, torch_state = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
    )
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


@contextlib.contextmanager
def _deadline(timeout_s: float | None) -> Iterator[None]:
    usable = (
        timeout_s is not None
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _alarm(signum: int, frame: Any) -> None:
        raise JobTimeout()

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, float(timeout_s))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
