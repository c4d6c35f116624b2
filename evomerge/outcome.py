"""What ``evomerge status`` adds below the progress lines: why the search stopped, the
baselines, and the failures grouped by reason."""

from __future__ import annotations

from evomerge.failures import group_lines, run_failure_groups
from evomerge.fitness.constraints import run_is_constrained
from evomerge.stop_reason import read_stop
from evomerge.validation import ranking
from evomerge.validation_baselines import (
    baseline_notes,
    baseline_scores,
    score_text,
)


def outcome_lines(st) -> list[str]:
    """Why the search stopped, the baselines, and the failures grouped by reason."""
    stop = read_stop(st)
    lines = [f"stop: {stop.describe()}"] if stop is not None else []
    baselines = baseline_scores(st)
    if baselines:
        shown = ", ".join(_baseline(n, f, v) for n, (f, v) in baselines.items())
        lines.append(f"baselines: {shown}")
        constrained = run_is_constrained(st)
        lines += baseline_notes(ranking(st), baselines, constrained, st.search_baselines())
    groups = run_failure_groups(st)
    if groups:
        lines.append(f"failures by reason ({sum(g.count for g in groups)}):")
        lines += group_lines(groups)
    return lines


def _baseline(label: str, fitness: float | None, validation: float | None) -> str:
    """``expert a 0.7500`` (its search fitness), with ``(validation 0.5000)`` once scored."""
    held_out = "" if validation is None else f" (validation {score_text(validation)})"
    return f"{label} {score_text(fitness)}{held_out}"
