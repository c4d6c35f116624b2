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
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from evomerge.config import load_experiment
from evomerge.recipe import ModelRef, Recipe
from evomerge.session import build_evaluator, open_search

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


def run_search(exp: Path, run_dir: Path, seed: int, evals: int, overrides=None) -> tuple:
    o = {"seed": seed, "budget.max_evals": evals, "budget.max_seconds": None} | (overrides or {})
    cfg = load_experiment(exp, o)
    t0 = time.perf_counter()
    final = open_search(cfg, run_dir).run()
    return final.best_fitness, time.perf_counter() - t0, final.best_digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--evals", type=int, default=64)
    ap.add_argument("--suite", choices=["skills", "cross"], default="skills")
    ap.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # old name: skills
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="evomerge_quality_"))
    ps_exp = EXP / ("toy_ps_cmaes.yaml" if args.suite == "skills" else "toy_cross_ps_cmaes.yaml")
    ps = load_experiment(ps_exp)
    base, models = ps.resolved_base(), ps.resolved_models()
    grid = score_recipes(ps, work, simple_merges(models, base))
    table: dict[str, list[float]] = {}
    secs: dict[str, list[float]] = {}

    def add(name: str, value: float, t: float) -> None:
        table.setdefault(name, []).append(value)
        secs.setdefault(name, []).append(t)

    for seed in seeds:
        d = work / f"s{seed}"
        f, t, winner = run_search(ps_exp, d / "ps", seed, args.evals)
        add("PS cma_es", f, t)
        f, t, _ = run_search(
            ps_exp,
            d / "rand",
            seed,
            args.evals,
            {"driver": {"name": "random", "options": {}}},
        )
        add("PS random", f, t)
        if args.suite == "skills":
            f, t, _ = run_search(EXP / "toy_m2n2.yaml", d / "m2n2", seed, args.evals)
            add("PS m2n2", f, t)
            continue
        f, t, _ = run_search(EXP / "toy_dfs.yaml", d / "dfs", seed, args.evals)
        add("DFS cma_es", f, t)
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
        f, t, _ = run_search(EXP / "toy_hybrid.yaml", d / "hybrid", seed, args.evals, hybrid)
        add("hybrid PS+DFS", f, t)
    best_simple = max(grid, key=lambda k: grid[k])
    print(f"fitness: {ps.name} target, {args.evals} evaluations per search, seeds {seeds}")
    print(f"{'method':<28}{'median':>9}{'min':>9}{'max':>9}{'median s':>10}")
    for name, vals in grid.items():
        print(f"{name:<28}{vals:>9.4f}")
    for name, vals in table.items():
        print(
            f"{name:<28}{statistics.median(vals):>9.4f}{min(vals):>9.4f}{max(vals):>9.4f}"
            f"{statistics.median(secs[name]):>10.1f}"
        )
    ps_med = statistics.median(table["PS cma_es"])
    print(
        f"\nbest simple merge: {best_simple} = {grid[best_simple]:.4f}; PS cma_es median "
        f"{ps_med:.4f} ({ps_med - grid[best_simple]:+.4f}); vs random median "
        f"{ps_med - statistics.median(table['PS random']):+.4f}"
    )


if __name__ == "__main__":
    main()
