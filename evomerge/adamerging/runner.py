"""An in-process AdaMerging run: ask, entropy gradient, tell (what the loop's hook does).

For tests and benchmarks that need no store: every candidate's fitness is its negative entropy
on that step's batch (the only signal AdaMerging itself has); score the final merge separately.
A search through ``evomerge search`` scores every iterate with the experiment's fitness instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from evomerge.adamerging.job import entropy_at, run_entropy_job
from evomerge.fw.job import Resolver
from evomerge.fw.space import FWPoolSpace


@dataclass(frozen=True)
class Step:
    index: int
    entropy: float
    ok: bool


def run_adamerging(
    space: FWPoolSpace, driver, *, resolve: Resolver | None = None, max_steps: int | None = None
) -> list[Step]:
    """Drive ``driver`` until it stops (or ``max_steps`` asks); returns one Step per candidate."""
    resolve = resolve or space.resolve
    steps: list[Step] = []
    while not driver.stop() and (max_steps is None or len(steps) < max_steps):
        (cand,) = driver.ask()
        request = driver.gradient_request(cand)
        if request is None:  # the final iterate: no gradient, just its entropy
            al, h = None, entropy_at(space, cand.x, driver.objective, driver.state.t, resolve)
        else:
            al = run_entropy_job(space, request, driver.objective, resolve)
            h = al.loss
        driver.tell([cand], [-h if math.isfinite(h) else math.nan], alignment=[al])
        steps.append(Step(cand.index, h, al is None or al.ok))
    return steps
