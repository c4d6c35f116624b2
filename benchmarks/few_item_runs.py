"""Per-item scores of real searches, for benchmarks/few_item_estimators.py (cached on disk).

    python benchmarks/few_item_runs.py [--setups skills,cross] [--seeds 0,1,2] [--evals 48]

Each (setup, seed) runs the setup's experiment (experiments/toy_ps_cmaes.yaml on lm-skills,
experiments/toy_cross_ps_cmaes.yaml on lm-cross, experiments/real_ps.yaml on the SmolLM2
experts: 40 items of the real target, a few minutes a search on CPU) with racing off, so
every candidate is scored on every item of the experiment's own window, and ``--evals`` fresh
candidates as the only budget (no wall-clock cap: the runs must not depend on the machine).
The experts and the base are scored once on the same items (the models a search knows before
its first generation).
What is kept, one JSON file per run under ``$EVOMERGE_CACHE/bench/few_item/``: each model's
per-item scores (tasks in label order, items in window order), its generation (-1 for the
experts and the base) and its fitness; the estimator benchmark replays these and never reruns
a search. A file already there is reused.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np

from evomerge.config import load_experiment
from evomerge.experiment import resolve_models
from evomerge.io.cache import cache_root
from evomerge.recipe import ModelRef, Recipe
from evomerge.session import build_evaluator, open_search
from evomerge.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
SETUPS = {
    "skills": ROOT / "experiments" / "toy_ps_cmaes.yaml",
    "cross": ROOT / "experiments" / "toy_cross_ps_cmaes.yaml",
    "real": ROOT / "experiments" / "real_ps.yaml",
}


def cache_file(setup: str, seed: int, evals: int) -> Path:
    return cache_root() / "bench" / "few_item" / f"{setup}-s{seed}-e{evals}.json"


def flat_items(result) -> tuple[list[float], list[float]]:
    """(per-item scores, per-item weights summing to 1) of a result: every task entry has an
    equal share of the fitness (the experiments here have one task; a multi-skill task is the
    mean of its skills), split evenly over its items."""
    labels = sorted(result.tasks)
    y, w = [], []
    for label in labels:
        ex = list(result.tasks[label].per_example)
        y += ex
        w += [1.0 / (len(labels) * len(ex))] * len(ex)
    return y, w


def generate(setup: str, seed: int, evals: int) -> Path:
    out = cache_file(setup, seed, evals)
    if out.exists() and "entries" in json.loads(out.read_text())["models"][0]:
        return out
    run = Path(tempfile.mkdtemp(prefix="evomerge_few_item_")) / "run"
    # the whole budget replaced: no wall-clock cap (real_ps.yaml has one); no validation
    # re-scoring, which the replay does not use
    over = {"seed": seed, "budget": {"max_evals": evals}, "fitness.validation": None}
    cfg = load_experiment(SETUPS[setup], over)
    open_search(cfg, run).run()
    models = []
    with RunStore.open(run, readonly=True) as st:
        for t in st.trials(where="WHERE c.reused_from IS NULL AND c.digest != ''"):
            res = st.eval_result(t.idx)
            if not t.ok or res is None:
                continue
            models.append(_model(f"candidate {t.idx}", t.generation, t.fitness, res))
    experts, base = resolve_models(cfg)
    refs = [*experts, *([base] if base and base not in experts else [])]
    ev = build_evaluator(cfg, run.parent / "baselines")
    try:
        recipes = [Recipe(merge_method="passthrough", models=[ModelRef(model=m)]) for m in refs]
        for ref, r in zip(refs, ev.evaluate(recipes), strict=True):
            if r.ok:
                models.append(_model(Path(ref).name, -1, r.fitness, r.result))
    finally:
        ev.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": setup, "seed": seed, "evals": evals, "models": models}))
    return out


def _model(name: str, generation: int, fitness: float, result) -> dict:
    y, w = flat_items(result)
    # The weighted item mean must be the fitness the search used, or the replay measures the
    # wrong thing.
    if not math.isclose(float(np.dot(y, w)), fitness, abs_tol=1e-9):
        raise RuntimeError(f"{name}: item mean {np.dot(y, w)} != fitness {fitness}")
    entries = [[label, len(result.tasks[label].per_example)] for label in sorted(result.tasks)]
    return {
        "name": name,
        "generation": generation,
        "fitness": fitness,
        "y": y,
        "w": w,
        "entries": entries,  # (task entry, items) in the order of y
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="skills,cross")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--evals", type=int, default=48)
    args = ap.parse_args()
    for setup in args.setups.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            print(generate(setup, seed, args.evals), flush=True)


if __name__ == "__main__":
    main()
