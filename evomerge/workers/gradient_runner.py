"""Frank-Wolfe or AdaMerging run in this process, without store or evaluator: ask, score, compute
what the candidate wants (``workers.wants``, the workers' own code), tell.

For tests and benchmarks that score candidates with a function of the merged weights; a search
through ``evomerge search`` goes through the loop, the workers and the store instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from evomerge.io.lazy_checkpoint import Meter
from evomerge.spaces.fw_pool import FWPoolSpace
from evomerge.workers.gradient import Alignment
from evomerge.workers.gradient_job import objective_at
from evomerge.workers.pool_weights import build_theta
from evomerge.workers.wants import compute_wants


@dataclass(frozen=True)
class Step:
    index: int
    fitness: float
    loss: float  # the objective at the candidate (NaN for FW's last, score-only candidate)
    ok: bool  # the gradient, when one was wanted, came back good
    peak_bytes: int


def run_in_process(
    space: FWPoolSpace,
    driver: Any,
    score: Callable[[Any, Alignment | None], float],
    *,
    max_steps: int | None = None,
) -> list[Step]:
    """Drive ``driver`` until it stops (or ``max_steps`` asks). ``score(candidate, gradient)``
    gives the fitness told with the gradient (``None`` for a candidate that wants none)."""
    steps: list[Step] = []
    while not driver.stop() and (max_steps is None or len(steps) < max_steps):
        (cand,) = driver.ask()
        wanted = compute_wants(space, cand.wants)
        al = wanted.get("gradient")
        fitness = score(cand, al)
        driver.tell([cand], [fitness], wanted=[wanted])
        loss = al.loss if al is not None else math.nan
        ok = al is None or al.ok
        steps.append(Step(cand.index, fitness, loss, ok, al.peak_bytes if al else 0))
    return steps


def run_frank_wolfe(
    space: FWPoolSpace, driver: Any, score: Callable[[dict], float], *, max_steps: int = 1000
) -> list[Step]:
    """Every FW iterate scored by ``score(theta)`` (its weights, streamed from the pool)."""

    def fitness(cand: Any, _al: Alignment | None) -> float:
        return score(build_theta(space, cand.x, space.resolve, Meter()))

    return run_in_process(space, driver, fitness, max_steps=max_steps)


def run_adamerging(space: FWPoolSpace, driver: Any, *, max_steps: int | None = None) -> list[Step]:
    """Every candidate's fitness is its negative entropy on that step's batch (the only signal
    AdaMerging itself has); the final, score-only one is measured without a gradient."""

    def fitness(cand: Any, al: Alignment | None) -> float:
        h = al.loss if al is not None else _final_entropy(space, driver, cand.x)
        return -h if math.isfinite(h) else math.nan

    steps = run_in_process(space, driver, fitness, max_steps=max_steps)
    return [s if math.isfinite(s.loss) else _with_loss(s) for s in steps]


def _final_entropy(space: FWPoolSpace, driver: Any, x: np.ndarray) -> float:
    return objective_at(space, x, driver.objective, driver.state.t)


def _with_loss(s: Step) -> Step:
    """The entropy of a score-only candidate is minus its fitness."""
    return Step(s.index, s.fitness, -s.fitness, s.ok, s.peak_bytes)
