"""The baselines of a search: each expert and the base model, scored once with the experiment's
fitness before the first candidate, so the winner is printed and reported against them; and,
where the space merges task vectors against a base model, task arithmetic (Ilharco et al. 2023,
"Editing Models with Task Arithmetic": theta_base + lambda * sum of the experts' task vectors)
with lambda chosen on the search's items among ``baselines.task_arithmetic``, as the paper
chooses it on held-out data. A study of merging off-the-shelf fine-tunes (arXiv 2511.21437)
found it the one simple merge that reliably beats the base: the bar a search must clear.
Where a parameter space has no base model, that bar is the uniform soup instead (Wortsman et
al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time": the plain average of the models' weights). A hybrid
(PS+DFS) search starts from a parameter-space winner, so that winner, alone, is its bar (Akiba
et al. 2024 report PS+DFS against PS).

They are also the fitness's smoke test: when every one of them fails, the fitness is broken
(an exception, a wrong return value), not the merges, and the search stops before it spends its
budget, with the reason on one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from evomerge.errors import UserInputError
from evomerge.failures import FailureLog, any_baseline_scored, baseline_failures, group_failures
from evomerge.recipe import ModelRef, Recipe
from evomerge.stop_reason import record_stop
from evomerge.workers.base import JobResult


def baseline_recipes(experiment) -> list[tuple[str, Recipe]]:
    """(label, recipe) of each expert and the base, each model alone, unmerged; in a hybrid
    space, then the parameter-space winner it starts from (``START_LABEL``), alone too."""
    refs = list(experiment.models)
    labels = [f"expert {Path(m).name}" for m in refs]
    base = experiment.base
    if base is not None and base not in refs:
        name = Path(base).name
        refs, labels = [*refs, base], [*labels, "base" if name == "base" else f"base {name}"]
    start = hybrid_start(experiment)
    if start is not None:
        refs, labels = [*refs, start], [*labels, START_LABEL]
    recipes = [Recipe(merge_method="passthrough", models=[ModelRef(model=m)]) for m in refs]
    return list(zip(labels, recipes, strict=True))


START_LABEL = "parameter-space winner"  # a hybrid search's start, scored as its bar


def hybrid_start(experiment) -> str | None:
    """The model reference of a hybrid space's winner (its model A), else None."""
    cfg = experiment.cfg
    if cfg.space.kind != "hybrid":
        return None
    from evomerge.spaces.hybrid import winner_reference

    return winner_reference(cfg.space.winner, experiment.winner)[0]


ITEM_EVALS_KEY = "baselines_item_evals"  # meta: the item evaluations the baselines cost
TA_LABEL = "task arithmetic"
TA_SPACES = ("parameter", "fw_pool")  # their experts share the base's shapes by construction


def task_arithmetic_recipes(experiment) -> list[tuple[str, Recipe]]:
    """(label, recipe) per lambda of ``baselines.task_arithmetic``: none without a base model,
    without an expert besides it, or in a data-flow or hybrid space (whose models need not
    share shapes)."""
    from evomerge.spaces.parameter import tokenizer_source_path

    cfg, base = experiment.cfg, experiment.base
    experts = [m for m in experiment.models if m != base]
    if base is None or not experts or cfg.space.kind not in TA_SPACES:
        return []
    tokenizer, dtype = None, "float32"
    if cfg.space.kind == "parameter":
        tokenizer = tokenizer_source_path(cfg.space.tokenizer_source, list(experiment.models), base)
        dtype = cfg.space.dtype
    return [
        (
            f"{TA_LABEL} λ={lam:g}",
            Recipe(
                merge_method="task_arithmetic",
                base_model=base,
                models=[ModelRef(model=m, parameters={"weight": lam}) for m in experts],
                dtype=dtype,
                tokenizer_source=tokenizer,
            ),
        )
        for lam in cfg.baselines.task_arithmetic
    ]


SOUP_LABEL = "uniform soup"


def uniform_soup_recipes(experiment) -> list[tuple[str, Recipe]]:
    """(label, recipe) of the uniform soup, every model at the same weight in a linear merge:
    in a parameter space without a base model and with two models or more (with a base model
    task arithmetic is the bar, and at lambda 1/n it is this average); none with
    ``baselines.uniform_soup: false``."""
    from evomerge.spaces.parameter import tokenizer_source_path

    cfg, models = experiment.cfg, list(experiment.models)
    if not cfg.baselines.uniform_soup or cfg.space.kind != "parameter":
        return []
    if experiment.base is not None or len(models) < 2:
        return []
    recipe = Recipe(
        merge_method="linear",
        models=[ModelRef(model=m, parameters={"weight": 1.0}) for m in models],
        dtype=cfg.space.dtype,
        tokenizer_source=tokenizer_source_path(cfg.space.tokenizer_source, models, None),
    )
    return [(SOUP_LABEL, recipe)]


def is_simple_merge(label: str) -> bool:
    """A baseline that merges (task arithmetic, the uniform soup), not a model alone: the ones
    ``export`` can write."""
    return export_flag(label) is not None


def all_baseline_recipes(experiment) -> list[tuple[str, Recipe]]:
    """Every baseline a search may have stored: the unmerged models, the uniform soup and each
    task-arithmetic lambda (a store keeps the best lambda's only)."""
    return [
        *baseline_recipes(experiment),
        *uniform_soup_recipes(experiment),
        *task_arithmetic_recipes(experiment),
    ]


def _best_lambda(grid: list[tuple[str, Recipe]], scored: dict[str, dict]) -> dict[str, dict]:
    """The task-arithmetic lambda that scored best on every item (the first of equals), with
    the grid's fitness per lambda and its recipe (for ``export --task-arithmetic``); the first
    failure when every lambda failed. A raced grid (``_race_grid``) also keeps, under
    ``raced``, the items each lambda stopped after and the pool size: their fitness is the mean
    over those items, and only the lambdas scored on every item compete."""
    tried = {label: scored[label] for label, _ in grid}
    ok = {k: v for k, v in tried.items() if v["fitness"] is not None}
    if not ok:
        return {TA_LABEL: next(iter(tried.values()))}
    # (the race's leader is scored on every item; only if it failed on a later slice do the
    # others' partial means compete)
    full = {k: v for k, v in ok.items() if not _partial(v)} or ok
    label = max(full, key=lambda k: full[k]["fitness"])  # max keeps the first of equals
    lambdas = {_lam(k): v["fitness"] for k, v in tried.items()}
    entry = {k: v for k, v in full[label].items() if k not in ("items", "of")}
    entry.update(lambdas=lambdas, recipe=dict(grid)[label].to_yaml())
    stopped = {_lam(k): v["items"] for k, v in ok.items() if _partial(v)}
    if stopped:
        entry["raced"] = {"stopped": stopped, "of": full[label]["of"]}
    return {label: entry}


def _lam(label: str) -> str:
    return label.split("=", 1)[1]


def _partial(entry: dict) -> bool:
    return "items" in entry and entry["items"] < entry["of"]


def race_the_grid(n_lambdas: int, n_models: int, workers: int) -> bool:
    """Whether to race the grid (under ``fitness.racing``): with two lambdas or more, and
    fewer workers than baselines. Racing scores the models alone first, then the grid in rounds
    of slices, so where the workers could score every baseline at once (one batch, one wave)
    the race would save item evaluations but double the wall time before the search starts."""
    return n_lambdas > 1 and workers < n_models + n_lambdas


def _race_grid(s, grid: list[tuple[str, Recipe]]) -> list[tuple[JobResult, dict]]:
    """(result, item counts) per lambda, the grid raced for its best under ``fitness.racing``
    (``evomerge.racing`` with a need of 1 and no archive place, the search's slices and item
    order): a lambda surely below the leader stops early and keeps its mean so far, so the grid
    can cost little more than its best lambda's one full evaluation. A lambda stopped wrongly
    would lower the bar and flatter the search, so the grid is raced more strictly than the
    search may be: no indifference zone (on a hard target every lambda scores 0 on the first
    items, and tied lambdas must not stop: the best may score only later) and a confidence of
    at least 0.95."""
    from evomerge.racing import Racer

    racer = s.loop.racer
    strict = {"indifference": 0.0, "confidence": max(racer.cfg.confidence, 0.95)}
    rules = racer.cfg.model_copy(update={"settle": "order", **strict})  # the best: every item
    pool = racer.run_pool
    out = Racer(rules, pool, racer.fitness, need=1, places=0).race(
        s.evaluator, [r for _, r in grid], []
    )
    return [(r, {"items": m, "of": pool.size}) for r, m in zip(out.results, out.items, strict=True)]


def _task_arithmetic_entry(baselines: dict) -> tuple[str, dict] | None:
    return next(((k, b) for k, b in baselines.items() if k.startswith(TA_LABEL)), None)


def stored_task_arithmetic(baselines: dict) -> tuple[str, dict] | None:
    """(label, entry) of the run's task-arithmetic baseline that scored, with its recipe; None
    when there is none (a data-flow space, no base model, ``[]``, every lambda failed, or a run
    from before the baseline)."""
    return _exportable(_task_arithmetic_entry(baselines))


def stored_soup(baselines: dict) -> tuple[str, dict] | None:
    """(label, entry) of the run's uniform-soup baseline that scored, with its recipe; None when
    there is none (a base model, one model, a data-flow space, ``uniform_soup: false``, it
    failed, or a run from before it)."""
    entry = baselines.get(SOUP_LABEL)
    return _exportable(None if entry is None else (SOUP_LABEL, entry))


#: ``evomerge export`` flag -> (its baseline's finder, why a run may have none: the refusal)
EXPORT_FLAGS = {
    "--task-arithmetic": (
        stored_task_arithmetic,
        "has no task-arithmetic baseline that scored (a data-flow or hybrid space, no "
        "base_model, baselines.task_arithmetic: [], or a run from before the baseline)",
    ),
    "--soup": (
        stored_soup,
        "has no uniform-soup baseline that scored (a base_model, where task arithmetic is the "
        "bar, one model, a data-flow or hybrid space, baselines.uniform_soup: false, or a run "
        "from before it)",
    ),
}


def export_flag(label: str) -> str | None:
    """The ``evomerge export`` flag that writes baseline ``label``'s recipe (a simple merge),
    else None."""
    if label.startswith(TA_LABEL):
        return "--task-arithmetic"
    return "--soup" if label == SOUP_LABEL else None


def _exportable(found: tuple[str, dict] | None) -> tuple[str, dict] | None:
    """``found`` when it scored and its recipe is stored (what ``export`` writes), else None."""
    if found is None or found[1].get("fitness") is None or not found[1].get("recipe"):
        return None
    return found


def lambda_grid_line(baselines: dict) -> str | None:
    """The task-arithmetic grid as scored on the search's items, for ``status`` and the report
    (None when the run has no grid of two or more lambdas); a lambda raced out early reads
    ``λ 1 0.0100 (10 of 80 items)``."""
    found = _task_arithmetic_entry(baselines)
    grid = (found[1].get("lambdas") or {}) if found else {}
    if len(grid) < 2:
        return None
    raced = found[1].get("raced") or {}
    stopped, of = raced.get("stopped", {}), raced.get("of")

    def shown(lam: str, v: float | None) -> str:
        value = "FAIL" if v is None else f"{v:.4f}"
        return f"λ {lam} {value}" + (f" ({stopped[lam]} of {of} items)" if lam in stopped else "")

    listed = ", ".join(shown(k, v) for k, v in grid.items())
    return f"{TA_LABEL} on the search items: {listed} (the best is the baseline)"


def score_baselines(s, log: FailureLog, say: Callable[[str], None]) -> None:
    """Score each expert, the base model, the uniform soup or task arithmetic's lambdas once,
    so the winner is printed against them (not search candidates; the best lambda is stored,
    its grid with it).
    A run whose baselines all failed scores them again (on resume, after the user fixed the
    fitness) and stops if they still all fail."""
    if any_baseline_scored(s.store.search_baselines()):
        return
    soup = uniform_soup_recipes(s.experiment)
    unmerged = [*baseline_recipes(s.experiment), *soup]
    grid = task_arithmetic_recipes(s.experiment)
    if s.loop.racer is not None and race_the_grid(len(grid), len(unmerged), s.cfg.workers):
        # the models alone (and a soup) are scored in full, the grid raced on its own
        done = [(r, {}) for r in s.evaluator.evaluate([r for _, r in unmerged])]
        done += _race_grid(s, grid)
    else:  # one batch: every worker busy
        done = [(r, {}) for r in s.evaluator.evaluate([r for _, r in [*unmerged, *grid]])]
    scored = {
        label: {
            "fitness": r.fitness if r.ok else None,
            "error": r.error,
            "scores": r.result.scores if r.result else {},
            **items,
        }
        for (label, _), (r, items) in zip([*unmerged, *grid], done, strict=True)
    }
    data = {label: scored[label] for label, _ in unmerged}
    for label, recipe in soup:  # for ``export --soup``
        data[label]["recipe"] = recipe.to_yaml()
    if grid:
        data.update(_best_lambda(grid, scored))
    s.store.set_meta("baselines", json.dumps(data))
    spent = sum(items.get("items", r.item_evals) for r, items in done)
    s.store.set_meta(ITEM_EVALS_KEY, json.dumps(spent))
    for label, b in data.items():
        tried = (
            f" (best of λ {', '.join(b['lambdas'])}{_raced_note(b)})"
            if len(b.get("lambdas", ())) > 1
            else ""
        )
        if b["fitness"] is not None:
            say(f"{label}: fitness {b['fitness']:.4f}{tried}")
        elif not log.note(label, b["error"]):
            say(f"{label}: fitness FAIL (a reason printed above)")
    if data and not any_baseline_scored(data):
        _stop_on_failed_baselines(s, data)


def stored_item_evals(store) -> int | None:
    """The item evaluations the search's baselines cost (outside the budget); None before they
    were scored, or in a run from before this count."""
    spent = store.get_json(ITEM_EVALS_KEY)
    return None if spent is None else int(spent)


def _raced_note(entry: dict) -> str:
    """``; raced, stopped early: λ 0.75 on 10, λ 1 on 20 of 80 items`` for a raced grid."""
    raced = entry.get("raced")
    if not raced:
        return ""
    stopped = ", ".join(f"λ {lam} on {m}" for lam, m in raced["stopped"].items())
    return f"; raced, stopped early: {stopped} of {raced['of']} items"


def _stop_on_failed_baselines(s, data: dict) -> None:
    """Every baseline failing (each unmerged model, and the simple merge when scored) means the
    fitness is broken: stop before the budget goes."""
    groups = group_failures(baseline_failures(data))
    more = f" (and {len(groups) - 1} other reasons)" if len(groups) > 1 else ""
    record_stop(s.store, "baselines_failed", groups[0].reason + more)
    raise UserInputError(
        f"fitness: every baseline ({', '.join(data)}) failed, so the fitness is broken, not "
        f"the merges: {groups[0].reason}{more}; fix the fitness, then `evomerge resume "
        f"{s.run_dir}` scores the baselines again and searches"
    )
