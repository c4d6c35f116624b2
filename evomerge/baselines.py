"""The baselines of a search: each expert and the base model, scored once with the experiment's
fitness before the first candidate, so the winner is printed and reported against them.

They are also the fitness's smoke test: when every one of them fails, the fitness is broken
(an exception, a wrong return value), not the merges, and the search stops before it spends its
budget, with the reason on one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from evomerge.errors import UserInputError
from evomerge.failures import FailureLog, baseline_failures, group_failures
from evomerge.recipe import ModelRef, Recipe
from evomerge.stop_reason import record_stop


def baseline_recipes(experiment) -> list[tuple[str, Recipe]]:
    """(label, recipe) of each expert and the base: each model alone, unmerged."""
    refs = list(experiment.models)
    labels = [f"expert {Path(m).name}" for m in refs]
    base = experiment.base
    if base is not None and base not in refs:
        name = Path(base).name
        refs, labels = [*refs, base], [*labels, "base" if name == "base" else f"base {name}"]
    recipes = [Recipe(merge_method="passthrough", models=[ModelRef(model=m)]) for m in refs]
    return list(zip(labels, recipes, strict=True))


def score_baselines(s, log: FailureLog, say: Callable[[str], None]) -> None:
    """Score each expert (and the base model) once, so the winner is printed against them (not
    search candidates). A run whose baselines all failed scores them again (on resume, after
    the user fixed the fitness) and stops if they still all fail."""
    stored = json.loads(s.store.get_meta("baselines") or "null")
    if stored is not None and len(baseline_failures(stored)) < len(stored):
        return
    labels, recipes = zip(*baseline_recipes(s.experiment), strict=True)
    results = s.evaluator.evaluate(list(recipes))
    data = {
        label: {
            "fitness": r.fitness if r.ok else None,
            "error": r.error,
            "scores": r.result.scores if r.result else {},
        }
        for label, r in zip(labels, results, strict=True)
    }
    s.store.set_meta("baselines", json.dumps(data))
    for label, b in data.items():
        if b["fitness"] is not None:
            say(f"{label}: fitness {b['fitness']:.4f}")
        elif not log.note(label, b["error"]):
            say(f"{label}: fitness FAIL (a reason printed above)")
    if data and len(baseline_failures(data)) == len(data):
        _stop_on_failed_baselines(s, data)


def _stop_on_failed_baselines(s, data: dict) -> None:
    """Every unmerged model failing means the fitness is broken: stop before the budget goes."""
    groups = group_failures(baseline_failures(data))
    more = f" (and {len(groups) - 1} other reasons)" if len(groups) > 1 else ""
    record_stop(s.store, "baselines_failed", groups[0].reason + more)
    raise UserInputError(
        f"fitness: every baseline ({', '.join(data)}) failed, so the fitness is broken, not "
        f"the merges: {groups[0].reason}{more}; fix the fitness, then `evomerge resume "
        f"{s.run_dir}` scores the baselines again and searches"
    )
