"""Constraints on a search: ``fitness.constraints``, each a task scored like the objective's
tasks with a bound (``min`` and/or ``max``) its score must respect.

Semantics follow Deb's feasibility rules (Deb 2000, "An efficient constraint handling method
for genetic algorithms"), which NSGA-II (Deb et al. 2002) and Optuna's ``constraints_func`` use:

* a candidate is *feasible* when every constraint holds; its *violation* is the sum over the
  constraints of how far the score is outside its bound (0 when feasible);
* a feasible candidate beats an infeasible one; two infeasible ones compare by violation;
  two feasible ones by their fitness.

evomerge applies them so:

* the archive, the winner and ``export`` hold feasible candidates only (the stored fitness is
  the plain objective score; the archive reads feasibility from the stored constraint scores);
* single-objective drivers (CMA-ES, M2N2, random, Frank-Wolfe, ...) are told a penalised value
  for an infeasible candidate: ``INFEASIBLE_FLOOR - violation``. Rank-based drivers only use the
  order of the values, and this order is exactly Deb's (every feasible score lies above the
  floor; less violation ranks higher), with no state to carry across a resume;
* Frank-Wolfe and AdaMerging read the told value only for their ``best``: their steps follow
  their own objective's gradient, so a constraint filters their iterates (archive, winner) and
  never steers them (neither paper bounds a score; docs/fitness.md);
* M2N2 ranks its archive by per-example rows, not by the told value: an infeasible child is
  told as a failure (it never enters M2N2's archive); no driver sees a constraint's entries
  among its per-example details;
* Optuna is told the constraint values natively (``Trial.set_constraint``, which its TPE and
  NSGA-II samplers read).

A constraint whose score is missing or NaN makes the candidate a failure, as a task does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# Below any score a fitness task gives (accuracies, -log perplexities, python scores are far
# above -1e9): every infeasible candidate ranks under every feasible one.
INFEASIBLE_FLOOR = -1e9


def run_is_constrained(store: Any) -> bool:
    """Whether a run's stored config bounds its search with ``fitness.constraints``."""
    import json

    return bool(json.loads(store.config_json())["fitness"].get("constraints"))


def entry_score(scores: Mapping[str, float], label: str) -> float:
    """A task's score from stored entries: its own, or the mean of its ``label/…`` entries
    (as ``Fitness.task_score`` reads an EvalResult)."""
    if label in scores:
        return float(scores[label])
    subs = [float(v) for n, v in scores.items() if n.startswith(label + "/")]
    return sum(subs) / len(subs) if subs else math.nan


class Constraints:
    """The configured constraints, evaluated on a candidate's per-entry scores."""

    def __init__(self, items: Sequence[Any]) -> None:
        from evomerge.fitness.config import task_label

        self.items = list(items)
        self.labels = [task_label(c.task) for c in self.items]

    @classmethod
    def of(cls, fitness_cfg: Any) -> Constraints | None:
        """The constraints of a FitnessConfig, or None when it has none."""
        items = getattr(fitness_cfg, "constraints", None) or []
        return cls(items) if items else None

    def __len__(self) -> int:
        return len(self.items)

    def scores(self, scores: Mapping[str, float]) -> list[float]:
        return [entry_score(scores, label) for label in self.labels]

    def values(self, scores: Mapping[str, float]) -> list[float]:
        """Optuna's form, one value per constraint: <= 0 holds, > 0 is the violation."""
        out = []
        for c, s in zip(self.items, self.scores(scores), strict=True):
            if math.isnan(s):
                out.append(math.nan)
                continue
            v = -math.inf
            if c.min is not None:
                v = max(v, c.min - s)
            if c.max is not None:
                v = max(v, s - c.max)
            out.append(v)
        return out

    def violation(self, scores: Mapping[str, float]) -> float:
        """Total violation (0: feasible); NaN when a constraint's score is missing."""
        vals = self.values(scores)
        if any(math.isnan(v) for v in vals):
            return math.nan
        return float(sum(max(0.0, v) for v in vals))

    def feasible(self, scores: Mapping[str, float]) -> bool:
        return self.violation(scores) == 0.0


def penalised(fitness: float, violation: float) -> float:
    """What a single-objective driver is told (see the module docstring)."""
    if math.isnan(fitness) or math.isnan(violation):
        return math.nan
    return fitness if violation == 0.0 else INFEASIBLE_FLOOR - violation


def feasible_fitness(
    fitness: float, scores: Mapping[str, float], cons: Constraints | None
) -> float:
    """The fitness the archive ranks by: NaN (never enters) for an infeasible candidate."""
    if cons is None or fitness is None or math.isnan(fitness):
        return fitness
    return fitness if cons.violation(scores) == 0.0 else math.nan


def bound_text(c: Any) -> str:
    """``label >= min``, ``label <= max`` or ``min <= label <= max``."""
    from evomerge.fitness.config import task_label

    label = task_label(c.task)
    if c.min is not None and c.max is not None:
        return f"{c.min:g} <= {label} <= {c.max:g}"
    return f"{label} >= {c.min:g}" if c.min is not None else f"{label} <= {c.max:g}"


def infeasible(cons: Constraints, trials: Sequence[Any]) -> set[int]:
    """The indices of the successful candidates that broke a constraint."""
    return {t.idx for t in trials if t.ok and not cons.feasible(t.scores)}


def summary_lines(cons: Constraints, trials: Sequence[Any]) -> list[str]:
    """What ``status`` and the report say about the constraints: each bound, and how many of
    the successful candidates (reused ones counted once, where first evaluated) met them all."""
    ok = [t for t in trials if t.ok and t.reused_from is None]
    bad = len(infeasible(cons, ok))
    lines = [f"constraint {bound_text(c)}" for c in cons.items]
    lines.append(
        f"constraints: {len(ok) - bad} feasible, {bad} infeasible of {len(ok)} evaluated "
        "(only feasible candidates enter the archive)"
    )
    if ok and bad == len(ok):
        lines.append("no feasible candidate yet: the archive is empty and there is no winner")
    return lines
