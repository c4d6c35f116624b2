"""An in-process Frank-Wolfe run: ask, score, gradient job, tell (what the loop hook does).

Used by tests and benchmarks that score candidates with a python function of the merged
weights; a search through ``evomerge search`` goes through the loop and the store instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evomerge.fw.checkpoint import Meter
from evomerge.fw.job import Resolver, build_theta, run_lmo_job
from evomerge.fw.lmo import Alignment
from evomerge.fw.space import FWPoolSpace


@dataclass(frozen=True)
class Step:
    index: int
    fitness: float
    loss: float
    peak_bytes: int


def run_frank_wolfe(
    space: FWPoolSpace,
    driver,
    score: Callable[[dict], float],
    *,
    resolve: Resolver | None = None,
    max_steps: int = 1000,
) -> list[Step]:
    resolve = resolve or (lambda ref: ref)
    steps: list[Step] = []
    while not driver.stop() and len(steps) < max_steps:
        (cand,) = driver.ask()
        fitness = score(build_theta(space, cand.x, resolve, Meter()))
        request = driver.lmo_inputs(cand)
        al = run_lmo_job(space, request, resolve) if request is not None else None
        driver.tell([cand], [fitness], alignment=[al])
        steps.append(_step(cand.index, fitness, al))
    return steps


def _step(index: int, fitness: float, al: Alignment | None) -> Step:
    if al is None:
        return Step(index, fitness, float("nan"), 0)
    return Step(index, fitness, al.loss, al.peak_bytes)
