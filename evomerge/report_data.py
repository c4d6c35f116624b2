"""What the report shows, read out of a run's store: the models compared per task (the best
merges, each expert, the base), the fitness curves and the best recipe's genes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import numpy as np

from evomerge.baselines import START_LABEL, is_simple_merge
from evomerge.store import Trial


@dataclass(frozen=True)
class Row:
    """One model of the per-task comparison."""

    name: str
    kind: str  # "merge" | "expert" | "base" | "simple" (task arithmetic, the uniform soup)
    fitness: float | None  # None: failed
    scores: dict[str, float] = field(default_factory=dict)  # finite scores only
    digest: str = ""
    estimate: bool = False  # a merge racing stopped early: means over the items it was scored on


def _finite(scores: dict) -> dict[str, float]:
    return {k: float(v) for k, v in scores.items() if v is not None and math.isfinite(v)}


def baseline_label(label: str) -> str:
    """Stores written before the base's label was shortened call it 'base base'."""
    return "base" if label == "base base" else label


def model_rows(top: list[Trial], baselines: dict, partial: Set[int] = frozenset()) -> list[Row]:
    """The archive's merges (``partial``: those racing stopped early, racing.archive_places 0),
    then the experts and the base."""
    rows = [
        Row(f"#{i + 1} merge", "merge", t.fitness, _finite(t.scores), t.digest, t.idx in partial)
        for i, t in enumerate(top)
    ]
    for label, b in baselines.items():
        name = baseline_label(label)
        kind = "base" if name.startswith("base") else "expert"
        kind = "simple" if is_simple_merge(name) or name == START_LABEL else kind
        rows.append(Row(name, kind, b.get("fitness"), _finite(b.get("scores") or {})))
    return rows


def task_names(rows: list[Row]) -> list[str]:
    return sorted({k for r in rows for k in r.scores})


def best_and_median(
    trials: list[Trial], infeasible: set[int] | None = None, partial: set[int] | None = None
) -> tuple[list[int], list[float], list[float]]:
    """(evaluations so far, best so far, generation median) at each generation's end, over the
    successful candidates not in ``infeasible`` (trial idx): with fitness.constraints the best
    so far is then the best the archive could hold, and ends at the winner's fitness.
    ``partial``: the candidates racing stopped before every item; their values are estimates
    from a few items (in the archive only under racing.archive_places 0), so the best so far
    leaves them out (a lucky first slice would otherwise top the curve) and the median keeps
    them (unbiased estimates)."""
    xs, best, med = [], [], []
    running, count = -math.inf, 0
    skip, estimated = infeasible or set(), partial or set()
    gens = sorted({t.generation for t in trials})
    for g in gens:
        rows = [t for t in trials if t.generation == g]
        count += len(rows)
        counted = [t for t in rows if t.ok and t.idx not in skip]
        ok = [t.fitness for t in counted]
        full = [t.fitness for t in counted if t.idx not in estimated]
        if full:
            running = max(running, max(full))
        xs.append(count)
        best.append(running if math.isfinite(running) else math.nan)
        med.append(median(ok) if ok else math.nan)
    return xs, best, med


def gene_matrix(names: list[str], values: list[float]) -> tuple[list[str], list[str], np.ndarray]:
    """Rows = gene name without its layer part, columns = the layer part (2nd '/' field)."""
    rows: dict[str, None] = {}
    cols: dict[str, None] = {}
    cells = {}
    for n, v in zip(names, values, strict=True):
        parts = n.split("/")
        col = parts[1] if len(parts) > 2 else "all"
        row = "/".join(parts[:1] + parts[2:]) if len(parts) > 2 else n
        rows.setdefault(row, None)
        cols.setdefault(col, None)
        cells[(row, col)] = v
    m = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            m[i, j] = cells.get((r, c), np.nan)
    return list(rows), list(cols), m


def best_genes(best: Trial | None, cfg_json: str, run_dir) -> tuple[list[str], list[float], str]:
    """Named, param-unit values of the best candidate's genes (raw genes when the space cannot
    be rebuilt, e.g. the models moved)."""
    if best is None or not best.genes:
        return [], [], ""
    x = np.asarray(best.genes, dtype=float)
    try:
        from evomerge.build import build_space
        from evomerge.config import experiment_from_json

        space = build_space(experiment_from_json(cfg_json), Path(run_dir))
        if hasattr(space, "path_hops"):
            hops = space.path_hops(x)
            names = [
                f"{space.pool_name(p).split('.L')[0]}/hop{k:02d}/scale"
                for k, (p, _) in enumerate(hops)
            ]
            return names, [s for _, s in hops], "best data-flow path: input scale per hop"
        vals = space.values(x) if hasattr(space, "values") else x
        return space.gene_names(), [float(v) for v in vals], "best recipe: gene values"
    except Exception:  # noqa: BLE001 - the plot falls back to raw genes
        return [f"g{i}" for i in range(len(x))], list(x), "best candidate: raw genes"


def item_count(
    items: int,
    budget: int | None,
    racing,
    stopped: int,
    outside: Mapping[str, int | None] | None = None,
) -> str:
    """Item evaluations (one item scored for one candidate: the unit of fitness cost), of the
    budget if there is one, with racing on how many candidates it stopped before every item,
    and ``outside`` (e.g. {"baselines": 500, "validation": 280}: what else scored items,
    outside the budget): what follows "item evaluations" in status and the report."""
    text = f"{items}{f'/{budget}' if budget else ''}"
    if racing is not None and racing.enabled:
        text += f"  (racing stopped {stopped} candidate(s) early)"
    spent = ", ".join(f"{k} {n}" for k, n in (outside or {}).items() if n)
    if spent:
        text += f"; outside the budget: {spent}"
    return text


def outside_budget(store) -> dict[str, int | None]:
    """The item evaluations the baselines and validation cost, outside the budget."""
    from evomerge.baselines import stored_item_evals
    from evomerge.validation import validation_item_evals

    return {"baselines": stored_item_evals(store), "validation": validation_item_evals(store)}
