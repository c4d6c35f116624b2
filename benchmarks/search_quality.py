"""Search quality on the zoo: does evolution beat simple merges and random search?

    python benchmarks/search_quality.py [--suite skills|cross] [--seeds 0,1,2] [--evals 64]

For each seed (median over >= 3 seeds is what the table shows), suite ``skills`` (lm-skills,
the README demo's problem):

* ``PS cma_es``    experiments/toy_ps_cmaes.yaml (DARE-TIES weights/densities, CMA-ES);
* ``PS random``    the same space and evaluation budget with the random driver;
* ``PS m2n2``      experiments/toy_m2n2.yaml: the same space and fitness with M2N2;

suite ``cross`` (lm-cross, the target neither expert solves — Sakana's setting):

* ``PS cma_es``    experiments/toy_cross_ps_cmaes.yaml, and ``PS random`` at the same budget;
* ``DFS cma_es``   experiments/toy_dfs.yaml (layer paths through both experts);
* ``hybrid``       experiments/toy_hybrid.yaml's space over the seed's PS winner and a source;

against the experts themselves and the best of a grid of simple merges (linear, task
arithmetic, TIES over a coarse weight grid, and TSV at its paper's defaults), all scored by the same fitness through the same
in-place evaluator. Prints one table: median, min and max of the best fitness per method.

Held-out: a search picks its winner by the fitness on the first ``--search-items`` test items
of each task (the experiment's ``limit``; 100 of lm-cross's 200 when it has none), so its best
fitness is optimistic — selected on the very items it reports. Each search's winner, every
simple merge, the experts and the base are therefore scored again on the remaining items
(``offset`` = search items, no limit) by the same evaluator: the ``held-out`` columns. The best
simple merge is chosen by its search-items score, as a user would, and reported held-out.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from evomerge.build import build_evaluator, open_search
from evomerge.config import ExperimentConfig, load_experiment
from evomerge.experiment import resolve_models
from evomerge.recipe import ModelRef, Recipe
from evomerge.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"


def simple_merges(models: list[str], base: str | None) -> dict[str, Recipe]:
    """The coarse grid a careful user would try by hand."""
    out: dict[str, Recipe] = {}
    n = len(models)
    grid = [(0.25, 0.75), (0.5, 0.5), (0.75, 0.25)] if n == 2 else [(1 / n,) * n]
    for ws in grid:
        out[f"linear w={','.join(f'{w:.2f}' for w in ws)}"] = Recipe(
            merge_method="linear",
            models=[ModelRef(model=m, parameters={"weight": w}) for m, w in zip(models, ws)],
        )
    if base:
        for lam, method in itertools.product((0.5, 0.75, 1.0), ("task_arithmetic", "ties")):
            params = {"weight": lam} | ({"density": 0.5} if method == "ties" else {})
            out[f"{method} w={lam}"] = Recipe(
                merge_method=method,
                base_model=base,
                models=[ModelRef(model=m, parameters=params) for m in models],
            )
        # the strongest training-free method on lm-skills in benchmarks/methods_table.py
        out["tsv (paper defaults)"] = Recipe(
            merge_method="tsv", base_model=base, models=[ModelRef(model=m) for m in models]
        )
    for i, m in enumerate(models):
        out[f"expert {i} ({Path(m).name})"] = Recipe(
            merge_method="passthrough", models=[ModelRef(model=m)]
        )
    if base:
        out["base"] = Recipe(merge_method="passthrough", models=[ModelRef(model=base)])
    return out


def score_recipes(cfg, run_dir: Path, recipes: dict[str, Recipe]) -> dict[str, float]:
    ev = build_evaluator(cfg, run_dir)
    try:
        results = ev.evaluate(list(recipes.values()))
    finally:
        ev.close()
    return {k: r.fitness for k, r in zip(recipes, results, strict=True)}


def zoo_limit(cfg: ExperimentConfig) -> int | None:
    """The search items of an experiment: its zoo tasks' common ``limit`` (None = all)."""
    limits = {t.options.get("limit") for t in cfg.fitness.tasks if t.kind == "zoo"}
    if len(limits) != 1 or any(t.kind != "zoo" for t in cfg.fitness.tasks):
        raise SystemExit(f"{cfg.name}: held-out scoring needs zoo tasks with one common limit")
    return limits.pop()


def window(cfg: ExperimentConfig, offset: int, limit: int | None) -> dict:
    """Override of ``cfg``'s fitness: its zoo tasks on items [offset, offset + limit)."""
    tasks = [t.model_dump() for t in cfg.fitness.tasks]
    for t in tasks:
        t["options"] = {**t["options"], "offset": offset, "limit": limit}
    return {"fitness.tasks": tasks}


def run_search(exp: Path, run_dir: Path, seed: int, evals: int, n: int, overrides=None) -> tuple:
    """(best fitness, seconds, winner digest, held-out score of the winner) of one search that
    optimises on the first ``n`` test items of each of its zoo tasks."""
    o = {"seed": seed, "budget.max_evals": evals, "budget.max_seconds": None} | (overrides or {})
    own = load_experiment(exp, o)  # each experiment keeps its own tasks; only the window moves
    cfg = load_experiment(exp, o | window(own, 0, n))
    t0 = time.perf_counter()
    final = open_search(cfg, run_dir).run()
    secs = time.perf_counter() - t0
    with RunStore.open(run_dir, readonly=True) as st:
        trial = st.trials(where="WHERE c.digest = ?", params=(final.best_digest,))[0]
    winner = Recipe.from_yaml(trial.recipe_yaml, origin=f"{run_dir} winner")
    held_cfg = load_experiment(exp, o | window(own, n, None))
    held = score_recipes(held_cfg, run_dir, {"winner": winner})["winner"]
    return final.best_fitness, secs, final.best_digest, held


def run_seed(args, seed: int, d: Path, exp: Path, n: int, add) -> None:
    """Every search of ``args.suite`` for one seed; ``add(name, fitness, seconds, held_out)``."""
    f, t, winner, h = run_search(exp, d / "ps", seed, args.evals, n)
    add("PS cma_es", f, t, h)
    rand = {"driver": {"name": "random", "options": {}}}
    add("PS random", *_drop_digest(run_search(exp, d / "rand", seed, args.evals, n, rand)))
    if args.suite == "skills":
        m2n2 = run_search(EXP / "toy_m2n2.yaml", d / "m2n2", seed, args.evals, n)
        add("PS m2n2", *_drop_digest(m2n2))
        return
    dfs = run_search(EXP / "toy_dfs.yaml", d / "dfs", seed, args.evals, n)
    add("DFS cma_es", *_drop_digest(dfs))
    hybrid = {
        "space": {
            "preset": "hybrid",
            "winner": f"recipe:{winner}",
            "partner": 1,
            "repeats": 2,
            "scales": "per_layer",
        },
        "recipe_paths": [str(d / "ps")],
    }
    hy = run_search(EXP / "toy_hybrid.yaml", d / "hybrid", seed, args.evals, n, hybrid)
    add("hybrid PS+DFS", *_drop_digest(hy))


def _drop_digest(r: tuple) -> tuple:
    f, t, _, h = r
    return f, t, h


def _row(name: str, vals: list[float], held: list[float], secs: list[float] | None) -> str:
    med = statistics.median
    line = f"{name:<28}{med(vals):>9.4f}{min(vals):>9.4f}{max(vals):>9.4f}"
    line += f"{med(held):>10.4f}{min(held):>9.4f}{max(held):>9.4f}"
    return line + (f"{med(secs):>10.1f}" if secs else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--evals", type=int, default=64)
    ap.add_argument("--suite", choices=["skills", "cross"], default="skills")
    ap.add_argument(
        "--search-items",
        type=int,
        default=None,
        help="test items per task the searches optimise on (default: the experiment's limit, "
        "100 when it has none); the rest are held out",
    )
    ap.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # old name: skills
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="evomerge_quality_"))
    ps_exp = EXP / ("toy_ps_cmaes.yaml" if args.suite == "skills" else "toy_cross_ps_cmaes.yaml")
    ps0 = load_experiment(ps_exp)
    n = args.search_items or zoo_limit(ps0) or 100
    ps = load_experiment(ps_exp, window(ps0, 0, n))
    models, base = resolve_models(ps)
    models = list(models)
    simple = simple_merges(models, base)
    grid = score_recipes(ps, work, simple)
    grid_held = score_recipes(load_experiment(ps_exp, window(ps0, n, None)), work, simple)
    table: dict[str, list[float]] = {}
    held: dict[str, list[float]] = {}
    secs: dict[str, list[float]] = {}

    def add(name: str, value: float, t: float, h: float) -> None:
        table.setdefault(name, []).append(value)
        secs.setdefault(name, []).append(t)
        held.setdefault(name, []).append(h)

    for seed in seeds:
        run_seed(args, seed, work / f"s{seed}", ps_exp, n, add)
    report(args, ps.name, seeds, n, grid, grid_held, table, held, secs)


def report(args, name, seeds, n, grid, grid_held, table, held, secs) -> None:
    med = statistics.median
    print(
        f"fitness: {name} target, {args.evals} evaluations per search, seeds {seeds}; "
        f"search items: first {n} test items per task, held-out: the rest"
    )
    print(
        f"{'method':<28}{'median':>9}{'min':>9}{'max':>9}{'held-out':>10}{'h-min':>9}"
        f"{'h-max':>9}{'median s':>10}"
    )
    for k, v in grid.items():
        print(f"{k:<28}{v:>9.4f}{'':>18}{grid_held[k]:>10.4f}")
    for k, vals in table.items():
        print(_row(k, vals, held[k], secs[k]))
    for k in table:
        print(
            f"  {k} per seed: search "
            + " ".join(f"{v:.4f}" for v in table[k])
            + " | held-out "
            + " ".join(f"{v:.4f}" for v in held[k])
        )
    best_simple = max(grid, key=lambda k: grid[k])
    ps_med, ps_held = med(table["PS cma_es"]), med(held["PS cma_es"])
    print(
        f"\nbest simple merge: {best_simple} = {grid[best_simple]:.4f}; PS cma_es median "
        f"{ps_med:.4f} ({ps_med - grid[best_simple]:+.4f}); vs random median "
        f"{ps_med - med(table['PS random']):+.4f}"
    )
    print(
        f"held-out: best simple merge (chosen on the search items) {best_simple} = "
        f"{grid_held[best_simple]:.4f}; PS cma_es median {ps_held:.4f} "
        f"({ps_held - grid_held[best_simple]:+.4f}); vs random median "
        f"{med(held['PS random']):.4f} ({ps_held - med(held['PS random']):+.4f})"
    )


if __name__ == "__main__":
    main()
