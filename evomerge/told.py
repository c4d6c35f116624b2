"""What a driver is told about a generation's results, and what the archive ranks them by.

One fitness per result (NaN for a failure), or an objective vector for a multi-objective driver;
with ``fitness.constraints`` an infeasible result is told penalised (or as a failure to M2N2,
or through Optuna's native constraint values) and never ranks in the archive
(fitness/constraints.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from evomerge.drivers.base import Driver
from evomerge.fitness.constraints import Constraints, feasible_fitness, penalised
from evomerge.results import EvalResult
from evomerge.workers.base import JobResult


def told_values(
    driver: Driver, results: Sequence[JobResult], constraints: Constraints | None = None
) -> list:
    """What ``driver.tell`` receives per result: the aggregate fitness, or, for a driver
    configured with several objectives (Optuna's NSGA-II), the objective vector; NaN for a
    failure. With ``fitness.constraints`` a driver without native constraints (every one but
    Optuna) is told the penalised value of an infeasible candidate (fitness/constraints.py)."""
    k = int(getattr(driver, "objectives", 1) or 1)
    if k > 1:
        return [tuple(r.objectives) if r.ok else (math.nan,) * k for r in results]
    if constraints is None or getattr(driver, "native_constraints", False):
        return [r.fitness if r.ok else math.nan for r in results]
    if getattr(driver, "ranks_by_details", False):  # M2N2: a penalty would not keep one out
        return [
            r.fitness if r.ok and constraints.violation(_scores(r)) == 0.0 else math.nan
            for r in results
        ]
    return [
        penalised(r.fitness, constraints.violation(_scores(r))) if r.ok else math.nan
        for r in results
    ]


def constraint_values(results: Sequence[JobResult], constraints: Constraints) -> list:
    """Per result, Optuna's constraint values (<= 0 holds); None for a failure."""
    return [constraints.values(_scores(r)) if r.ok else None for r in results]


def objective_entries(result: EvalResult | None, constraints: Constraints | None) -> Any:
    """The EvalResult a driver is told as details: without the constraints' entries, so a
    driver using per-example rows (M2N2's resources) sees the objective's items only."""
    if result is None or constraints is None:
        return result
    drop = tuple(constraints.labels)
    keep = {
        n: t
        for n, t in result.tasks.items()
        if not any(n == d or n.startswith(d + "/") for d in drop)
    }
    return dataclasses.replace(result, tasks=keep)


def _scores(r: JobResult) -> dict[str, float]:
    return r.result.scores if r.result is not None else {}


def archive_fitness(r: JobResult, constraints: Constraints | None) -> float:
    """The fitness the archive ranks a result by: NaN for a failure or an infeasible one."""
    return feasible_fitness(r.fitness, _scores(r), constraints) if r.ok else math.nan
