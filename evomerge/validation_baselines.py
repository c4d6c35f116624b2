"""The experts and the base on the validation items: what the winner has to beat.

``evomerge.baselines`` scores each expert and the base on the search's items. The winner's
search fitness is the best of many noisy scores there, biased upwards, so comparing it with
theirs flatters the merge. With ``fitness.validation`` set, the baselines that scored are also
scored on the validation items, once, by the evaluator that validates the archive, and
``search``, ``status`` and the report put the winner's validation score beside theirs. They are
stored in the meta table under ``validation_baselines`` (JSON ``{label: {fitness, scores,
error}}``) after each chunk of results; a label stored is never scored again (a killed run's
resume scores the rest; a run from before this existed gets them on its next resume).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from evomerge.baselines import export_flag, lambda_grid_line
from evomerge.recipe import Recipe

META_KEY = "validation_baselines"


def stored_baselines(store: Any) -> dict[str, dict]:
    """The baselines' validation scores (label -> {fitness, scores, error})."""
    return store.get_json(META_KEY, {})


def baselines_to_validate(store: Any, labelled: Sequence[tuple[str, Recipe]]) -> list:
    """The (label, recipe) pairs that scored on the search's items and have no validation
    score yet (one that failed the search would only fail again)."""
    searched = store.search_baselines()
    done = stored_baselines(store)
    return [
        (label, r)
        for label, r in labelled
        if label not in done and searched.get(label, {}).get("fitness") is not None
    ]


def baseline_scores(store: Any) -> dict[str, tuple[float | None, float | None]]:
    """label -> (search fitness, validation score): the baselines in their order; None where
    not scored (failed on the search, or not validated yet), NaN for a failed validation."""
    searched = store.search_baselines()
    validated = stored_baselines(store)

    def held_out(label: str) -> float | None:
        if label not in validated:
            return None
        v = validated[label].get("fitness")
        return math.nan if v is None else float(v)

    return {label: (b.get("fitness"), held_out(label)) for label, b in searched.items()}


def above_winner(winner: float, scores: dict[str, float | None], on: str) -> str | None:
    """A line saying which baseline scores above the winner ``on`` the same items (the
    best of them), or None when the winner is at least as good as each."""
    finite = {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}
    if not finite or not math.isfinite(winner):
        return None
    label, best = max(finite.items(), key=lambda kv: kv[1])
    if best <= winner:
        return None
    flag = export_flag(label)
    how = f" (`evomerge export RUN --out FILE {flag}` writes it)" if flag else ""
    return (
        f"note: {label} scores {best:.4f} on {on}, above the winner's {winner:.4f}: "
        f"no merge this search kept beats it{how}"
    )


def baseline_line(fitness: float | None, validation: float | None, by_validation: bool) -> str:
    """``validation 0.5000  search 0.7500`` when the winner was chosen on validation, else
    ``fitness 0.7500`` (``FAIL`` for a failed score, ``-`` for one not taken)."""
    if not by_validation or fitness is None:
        return f"fitness {score_text(fitness)}"
    return f"validation {score_text(validation, '-')}  search {score_text(fitness)}"


def score_text(v: float | None, missing: str = "FAIL") -> str:
    """A score to 4 places; ``missing`` for None, FAIL for NaN."""
    if v is None:
        return missing
    return f"{v:.4f}" if math.isfinite(v) else "FAIL"


def winner_note(ranked: Any, baselines: dict, constrained: bool = False) -> str | None:
    """The ``above_winner`` line on the items the winner was chosen on: validation's when it
    was chosen there, else the search's (not against a racing estimate: other items; not
    under fitness.constraints, which the baselines need not meet)."""
    if not ranked.members or constrained:
        return None
    w = ranked.members[0]
    if ranked.on_validation:
        vals = {label: val for label, (_, val) in baselines.items()}
        return above_winner(w.validation, vals, "the validation items")
    if w.estimate:
        return None
    fits = {label: fit for label, (fit, _) in baselines.items()}
    return above_winner(w.fitness, fits, "the search's items")


def baseline_notes(ranked: Any, scores: dict, constrained: bool, searched: dict) -> list[str]:
    """What ``status`` and the report say under the baselines: the note when one beats the
    winner, and task arithmetic's lambda grid."""
    lines = [winner_note(ranked, scores, constrained), lambda_grid_line(searched)]
    return [line for line in lines if line]
