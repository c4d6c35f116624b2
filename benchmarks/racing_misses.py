"""What racing's early stops hide from the driver: every raced candidate rescored on every item.

    python benchmarks/racing_misses.py [--setups skills,cross] [--seeds 0,1,2] [--evals 32]
        [--racing "{first_slice: 10, slice: 10, settle: set, confidence: 0.7}"]

For each setup and seed, one racing CMA-ES search of ``--evals`` candidates (the setups,
windows and budget of benchmarks/fitness_cost.py's ``--budget candidates``); then every fresh
candidate is scored on every search item, as full scoring would have scored it. Per generation
this compares what the driver was told (a stopped candidate: its mean on the items it saw) with
the full scores:

* ``best stopped``: the generation's best by full score was stopped early (so it could not
  enter the archive, nor win);
* ``top-mu kept``: of the best mu by full score (CMA-ES's parents), the share the driver's told
  values also put in its best mu;
* ``rank corr``: Spearman's correlation of told and full values within the generation;
* ``lost``: the best full score of the run minus the full score of racing's winner (> 0: a
  better candidate was seen and stopped).

Counts and scores, not timings (docs/racing_measurements.md, "lm-cross: racing does not reach 1/5").
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import yaml
from fitness_cost import SETUPS, run_one, windowed
from scipy.stats import spearmanr

from evomerge.recipe import Recipe
from evomerge.results import OK
from evomerge.session import build_evaluator
from evomerge.store import RunStore


def generations(run: Path) -> tuple[list[list[tuple[Recipe, float, bool]]], float]:
    """Per generation: (recipe, told value, stopped early) of each fresh candidate; and the
    winner's fitness (its archive entry: fully scored)."""
    gens: dict[int, list] = {}
    with RunStore.open(run, readonly=True) as st:
        rows = st.conn.execute(
            "SELECT c.generation, c.recipe_yaml, c.meta_json, r.fitness FROM candidates c"
            " JOIN results r USING (idx) WHERE c.reused_from IS NULL AND r.status = ?"
            " ORDER BY c.idx",
            (OK,),
        ).fetchall()
        best = st.archive()[0].fitness
    for g, recipe, meta, told in rows:
        r = json.loads(meta)["racing"]
        gens.setdefault(g, []).append((Recipe.from_yaml(recipe), told, r["items"] < r["of"]))
    return list(gens.values()), best


def rescore(exp: Path, n: int, gens: list, work: Path) -> list[list[float]]:
    """Every candidate of ``gens`` scored on all ``n`` search items per task (full scoring);
    ``work`` is the evaluator's folder."""
    ev = build_evaluator(windowed(exp, 0, n), work)
    try:
        return [[r.fitness for r in ev.evaluate([c[0] for c in g])] for g in gens]
    finally:
        ev.close()


def misses(gens: list, full: list[list[float]], winner: float, mu: int) -> dict[str, float]:
    """The figures of the module docstring, from what the driver was told and the full scores."""
    stopped, kept, corr = [], [], []
    for g, f in zip(gens, full, strict=True):
        told = np.array([c[1] for c in g])
        f = np.array(f)
        stopped.append(float(g[int(np.argmax(f))][2]))  # ties: the first, as the archive
        m = min(mu, len(g))
        kept.append(len(set(np.argsort(-told, kind="stable")[:m]) & set(np.argsort(-f)[:m])) / m)
        if len(set(f)) > 1 and len(set(told)) > 1:
            corr.append(float(spearmanr(told, f).statistic))
    return {
        "best stopped": statistics.mean(stopped),
        "top-mu kept": statistics.mean(kept),
        "rank corr": statistics.mean(corr) if corr else float("nan"),
        "lost": max(max(f) for f in full) - winner,
        "stopped": sum(c[2] for g in gens for c in g) / sum(len(g) for g in gens),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="skills,cross")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--evals", type=int, default=32, help="candidates of each search")
    ap.add_argument(
        "--racing", default="{first_slice: 10, slice: 10, settle: set, confidence: 0.7}"
    )
    args = ap.parse_args()
    racing = yaml.safe_load(args.racing)
    with tempfile.TemporaryDirectory(prefix="evomerge_racing_misses_") as tmp:
        for name in args.setups.split(","):
            exp, n = SETUPS[name]
            mu = yaml.safe_load(exp.read_text())["driver"]["options"]["popsize"] // 2
            per_seed = []
            for seed in args.seeds.split(","):
                run = Path(tmp) / f"{name}-s{seed}"
                budget = {"max_evals": args.evals}
                run_one(exp, run, int(seed), n, 1.0, budget, "racing", None, racing)
                gens, winner = generations(run)
                per_seed.append(
                    misses(gens, rescore(exp, n, gens, run.parent / f"{run.name}-full"), winner, mu)
                )
            print(f"\n{name}: {args.evals} candidates, mu = {mu}, seeds {args.seeds}, {racing}")
            for key in per_seed[0]:
                vals = [s[key] for s in per_seed]
                se = statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else float("nan")
                print(f"  {key:<14}{statistics.mean(vals):>8.3f} ± {se:.3f}")


if __name__ == "__main__":
    main()
