"""What ``evomerge status`` adds below the progress lines: why the search stopped, the
baselines, and the failures grouped by reason."""

from __future__ import annotations

import json

from evomerge.failures import group_lines, run_failure_groups
from evomerge.stop_reason import read_stop


def outcome_lines(st) -> list[str]:
    """Why the search stopped, the baselines, and the failures grouped by reason."""
    stop = read_stop(st)
    lines = [f"stop: {stop.describe()}"] if stop is not None else []
    baselines = json.loads(st.get_meta("baselines") or "{}")
    if baselines:
        fits = [(n, b.get("fitness")) for n, b in baselines.items()]
        shown = ", ".join(f"{n} {'FAIL' if f is None else f'{f:.4f}'}" for n, f in fits)
        lines.append(f"baselines: {shown}")
    groups = run_failure_groups(st)
    if groups:
        lines.append(f"failures by reason ({sum(g.count for g in groups)}):")
        lines += group_lines(groups)
    return lines
