"""The Sakana result on a real model: SmolLM2-135M-Instruct, a skill and a language expert (zoo
smollm2-experts), and searches in parameter space, data-flow space and both.

    python benchmarks/real_search.py [--seeds 0 1 2] [--evals 48] [--out runs/real_bench]

Builds the zoo (or reuses it; its recorded build time is shown), then scores on the validation
items (never searched) of the target and of each expert's task:

* the instruct model, each expert, and a grid of simple merges (task arithmetic, TIES,
  DARE-TIES, SLERP), the best simple merge chosen on the target's *search* items;
* per seed, the winners (chosen by validation, as a search chooses) of real_ps.yaml (CMA-ES,
  parameter space), real_dfs.yaml (data flow), real_hybrid.yaml (data flow over that seed's
  PS winner) and random search in the PS space at the same budget.

Every search runs through the CLI (`evomerge search`, `evomerge export`) on copies of the
experiment files with the seed and budget set, so the numbers are what a user gets. The table is
printed and written to OUT/real_search.json. ``--skip-search`` scores only the sources and
simple merges.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
TASKS = {"target": "real_target", "skill": "real_shift", "language": "real_zel"}
SKILL, LANGUAGE, BASE = (f"zoo:smollm2-experts/{m}" for m in ("skill", "language", "instruct"))


def _fitness_configs(shots: int = 0):
    """One FitnessConfig per task (target, skill's, language's), as real_ps.yaml scores them
    (zero-shot); ``shots``: that many worked examples as earlier chat turns instead."""
    from evomerge.config import load_experiment

    cfg = load_experiment(EXPERIMENTS / "real_ps.yaml")
    target = cfg.fitness.tasks[0]
    out = {}
    for label, task in TASKS.items():
        t = target.model_copy(update={"task": task, "include_path": [f"../fitness/{task}"]})
        if shots:
            t = t.model_copy(update={"num_fewshot": shots, "fewshot_as_multiturn": True})
        out[label] = cfg.fitness.model_copy(update={"tasks": [t]})
    return out, Path(cfg.base_dir)


def score(
    path: Path | str, splits: dict[str, str], recipe_paths: list[str] = (), shots: int = 0
) -> dict:
    """{task label: exact match} of a model folder, zoo model, recipe YAML or run folder."""
    from evomerge.eval_cli import load_model
    from evomerge.eval_target import open_target
    from evomerge.fitness import build_fitness

    configs, base_dir = _fitness_configs(shots)
    out = {}
    with open_target(Path(path) if ":" not in str(path) else path, recipe_paths=recipe_paths) as t:
        model, tok = load_model(t.folder)
        for label, split in splits.items():
            fitness = build_fitness(configs[label], base_dir=base_dir, split=split)
            out[label] = round(fitness.aggregate(fitness(model, tok)), 4)
    return out


def _score_job(job: tuple) -> dict:
    import torch

    torch.set_num_threads(1)  # one thread per process: see README, Threads
    return score(job[0], job[1], shots=job[2] if len(job) > 2 else 0)


def _pool(jobs: int):
    """Processes that score models side by side (spawned: each loads its own torch)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))


def _recipe(folder: Path, name: str, body: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def simple_merges(folder: Path) -> dict[str, Path]:
    """A small grid of the usual one-shot merges of the two experts' task vectors: task
    arithmetic over a grid of (skill, language) weights, TIES and DARE-TIES at two densities,
    SLERP at three points."""
    from evomerge.config import resolve_model_ref

    skill, language, base = (resolve_model_ref(r) for r in (SKILL, LANGUAGE, BASE))

    def tv(method: str, ws: float, wl: float, **p) -> dict:
        models = [{"model": m, "parameters": {"weight": w, **p}}
                  for m, w in ((skill, ws), (language, wl))]  # fmt: skip
        return {"merge_method": method, "base_model": base, "models": models}

    weights = [(1, 1), (0.5, 0.5), (1, 0.5), (0.5, 1), (1, 1.5), (1.5, 1)]
    grid = {f"task_arithmetic w={ws}/{wl}": tv("task_arithmetic", ws, wl) for ws, wl in weights}
    for method in ("ties", "dare_ties"):
        grid |= {f"{method} w=1/1 d={d}": tv(method, 1, 1, density=d) for d in (0.5, 0.9)}
    for t in (0.3, 0.5, 0.7):
        grid[f"slerp t={t}"] = {
            "merge_method": "slerp",
            "base_model": skill,
            "models": [{"model": language}],  # mergekit's form: t=0 the base (skill), 1 this
            "parameters": {"t": t},
        }
    return {name: _recipe(folder, name.replace(" ", "_").replace("/", "-"), body)
            for name, body in grid.items()}  # fmt: skip


def _experiment(name: str, out: Path, seed: int, evals: int, **space) -> Path:
    """A copy of experiments/NAME.yaml with the seed and budget set and paths made absolute."""
    body = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    body["seed"], body["budget"] = seed, {"max_evals": evals}
    body["evaluation"] = {**body.get("evaluation", {}), "threads": 1}  # searches run side by side
    for task in body["fitness"]["tasks"]:
        task["include_path"] = str((EXPERIMENTS / task["include_path"]).resolve())
    body["space"] |= space
    body.pop("recipe_paths", None)
    path = out / f"{name}_seed{seed}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "evomerge", *args], check=True, stdout=subprocess.DEVNULL)


def run_search(name: str, experiment: Path, run_dir: Path, sources: tuple[str, ...] = ()) -> dict:
    """Search, export the winner (by validation) and score it on every task's validation items."""
    start = time.perf_counter()
    if not (run_dir / "store.sqlite").is_file():
        _cli("search", str(experiment), "--run-dir", str(run_dir))
    best = run_dir / "best.yaml"
    _cli("export", str(run_dir), "--out", str(best))
    import torch

    torch.set_num_threads(1)
    scores = score(best, dict.fromkeys(TASKS, "validation"), [str(run_dir), *sources])
    return {"search": name, **scores, "seconds": round(time.perf_counter() - start)}


def sources_and_merges(out: Path, workers: int) -> tuple[list[dict], dict]:
    """Validation scores of the instruct model, the experts and the best simple merge (chosen
    on the target's search items), and every simple merge's score on those search items."""
    val = dict.fromkeys(TASKS, "validation")
    sources = {"instruct": BASE, "skill expert": SKILL, "language expert": LANGUAGE}
    recipes = simple_merges(out)
    # the experiments score zero-shot, as the experts were trained; the instruct model also
    # gets two worked examples (its best prompt: zero-shot it explains instead of answering)
    todo = [(BASE, val, 2)] + [(str(ref), val) for ref in sources.values()]
    todo += [(str(path), {"target": "search"}) for path in recipes.values()]
    with _pool(workers) as pool:
        results = list(pool.map(_score_job, todo))
    rows = [{"model": "instruct, 2 worked examples", **results[0]}]
    rows += [{"model": k, **r} for k, r in zip(sources, results[1:], strict=False)]
    merges = {k: r["target"] for k, r in zip(recipes, results[1 + len(sources) :], strict=True)}
    for name, got in merges.items():
        print(f"  {name}: target (search items) {got}", flush=True)
    best = max(merges, key=merges.get)
    rows.append({"model": f"best simple merge ({best})", **score(recipes[best], val)})
    for r in rows:
        print(r, flush=True)
    return rows, merges


def _searches(folder: Path, seed: int, evals: int, jobs: int) -> list[dict]:
    """PS, random (PS space) and data flow side by side (``jobs`` processes), then the hybrid
    over this seed's PS winner."""
    folder.mkdir(parents=True, exist_ok=True)
    ps = _experiment("real_ps", folder, seed, evals)
    body = yaml.safe_load(ps.read_text())
    body["driver"] = {"name": "random"}
    runs = [
        ("parameter space", ps, folder / "ps"),
        ("random (PS space)", _recipe(folder, "real_random", body), folder / "random"),
        ("data flow", _experiment("real_dfs", folder, seed, evals), folder / "dfs"),
    ]
    with _pool(jobs) as pool:
        got = list(pool.map(run_search, *zip(*runs, strict=True)))
    winner = str(folder / "ps" / "best.yaml")
    hybrid = _experiment("real_hybrid", folder, seed, evals, winner=winner)
    # the hybrid's winner is a merge over recipe:<PS winner>: found in the PS run's archive
    got.append(run_search("hybrid", hybrid, folder / "hybrid", (str(folder / "ps"),)))
    return [{"seed": seed, **g} for g in got]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--evals", type=int, default=48, help="evaluations per search")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "real_bench")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-sources", action="store_true", help="only the searches")
    ap.add_argument("--jobs", type=int, default=2, help="processes scoring models side by side")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(1)

    from evomerge.config import resolve_model_ref
    from evomerge.zoo.build import load_manifest

    start = time.perf_counter()
    zoo = Path(resolve_model_ref(SKILL)).parent
    print(
        f"zoo {zoo.name}: built in {load_manifest(zoo)['build_seconds']} s (recorded), "
        f"ready after {time.perf_counter() - start:.0f} s here",
        flush=True,
    )

    rows: list[dict] = []
    merges: dict = {}
    if not args.skip_sources:
        rows, merges = sources_and_merges(args.out, args.jobs)

    searches: list[dict] = []
    for seed in [] if args.skip_search else args.seeds:
        searches += _searches(args.out / f"seed{seed}", seed, args.evals, args.jobs)
        for s in searches[-4:]:
            print(s, flush=True)

    print("\n| model | target | skill task | language task |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['target']:.3f} | {r['skill']:.3f} | {r['language']:.3f} |")
    for name in dict.fromkeys(s["search"] for s in searches):
        got = [s for s in searches if s["search"] == name]
        cells = []
        for k in TASKS:
            vals = [s[k] for s in got]
            sd = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.mean(vals):.3f}{sd}")
        print(f"| {name} winner ({len(got)} seed(s)) | " + " | ".join(cells) + " |")
    report = {"sources": rows, "simple_merges_search_items": merges, "searches": searches}
    (args.out / "real_search.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
