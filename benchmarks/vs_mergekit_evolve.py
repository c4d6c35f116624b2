"""evomerge against the real mergekit-evolve (mergekit 0.1.5): the same genome, task and budget.

    python benchmarks/vs_mergekit_evolve.py [--candidates 64] [--runs 3] [--quick] [--out F.json]

Both tools search DARE-TIES over the zoo's lm-skills experts (cipher, shift, sort, reverse;
task vectors against its base): one weight and one density per expert and layer group
(``--layer-groups`` 2 of the 4 layers: 16 genes), by CMA-ES with sigma0 1/6 from weight 1/4,
density 1 (mergekit-evolve's start), ``--popsize`` candidates a generation, ``--candidates`` in
all. The fitness is the mean exact match over four lm-eval tasks (fitness/zoo_cipher,
zoo_shift_u, zoo_sort_u, zoo_reverse), the first ``--items`` docs of each, greedy generation,
in ``--dtype`` (bfloat16: mergekit-evolve merges and evaluates in bfloat16, hard-coded). Each
winner is then scored by this script, the same way for both, on the next ``--val-items`` docs
of each task (held out from both searches).

* mergekit-evolve runs as its own command (``benchmarks/mergekit_evolve_cpu.py``: a placeholder
  ``vllm`` package and a Ray cluster with a placeholder GPU, nothing else changed) with its
  defaults: strategy ``pool`` (one Ray actor), on-disk evaluation (every candidate merged to
  ``storage/merged/merged*``, scored by ``lm_eval.simple_evaluate(model="huggingface")`` on
  a freshly loaded model, then deleted), inputs resharded to bf16 copies first, the final
  model saved. Flags it needs here: ``--no-vllm --no-merge-cuda``.
* evomerge runs ``evomerge search`` (serial evaluator: one process, candidates merged in place
  into a resident model, scored by lm-eval in process), archive top 1.

Printed per tool, medians over ``--runs`` (seed = --seed + run): candidates per hour of search
(first candidate to the end of the last), the whole command's wall time, best search score,
validation score of the winner, bytes written under its folder (total and peak at once), and the
peak RSS of its process tree (Ray's processes included) and of its largest process. Everything
is written under one temp dir, deleted at the end; only ``--out`` (JSON) is written elsewhere.
See docs/vs_mergekit_evolve.md for what differs between the two searches.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from mergekit_evolve_cpu import placeholder_vllm
from process_watch import Watched, run_watched

REPO = Path(__file__).resolve().parents[1]
TASKS = ("zoo_cipher", "zoo_shift_u", "zoo_sort_u", "zoo_reverse")
GROUP = "vs_mkevolve_skills"
EXPERTS = ("cipher", "shift", "sort", "reverse")
MIB = 2**20


def zoo_models() -> tuple[list[str], str]:
    from evomerge.config import resolve_model_ref

    experts = [resolve_model_ref(f"zoo:lm-skills/{e}") for e in EXPERTS]
    return experts, resolve_model_ref("zoo:lm-skills/base")


def genome_yaml(experts: list[str], base: str, a: argparse.Namespace) -> dict:
    """mergekit-evolve's config: its genome (ModelGenomeDefinition) and its lm-eval tasks."""
    n_layers = 4  # the lm-skills zoo's depth
    return {
        "genome": {
            "models": experts,
            "base_model": base,
            "merge_method": "dare_ties",
            "layer_granularity": n_layers // a.layer_groups,
        },
        "tasks": [
            {"name": t, "weight": 1 / len(TASKS), "metric": "exact_match,none"} for t in TASKS
        ],
        "limit": a.items,
        "apply_chat_template": False,  # the zoo's tokenizer has no chat template
        "fewshot_as_multiturn": False,
    }


def group_folder(tmp: Path) -> Path:
    """An lm-eval group of the four tasks (their mean exact match), so that evomerge scores a
    candidate with one ``simple_evaluate`` call, as mergekit-evolve does (one call, all tasks)."""
    folder = tmp / "group"
    folder.mkdir(exist_ok=True)
    group = {
        "group": GROUP,
        "task": list(TASKS),
        "aggregate_metric_list": [{"metric": "exact_match", "weight_by_size": False}],
        "metadata": {"version": 1.0},
    }
    (folder / f"{GROUP}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    return folder


def lm_eval_tasks(a: argparse.Namespace, group: Path) -> list[dict]:
    """evomerge's fitness tasks: the group (one lm-eval call per candidate), or with
    ``--evomerge-tasks separate`` one entry per task (one call each: slower, same score)."""
    folders = [str(REPO / "fitness" / t) for t in TASKS]
    common = {"metric": "exact_match", "limit": a.items, "batch_size": a.batch_size}
    if a.evomerge_tasks == "group":
        return [
            {"kind": "lm_eval", "task": GROUP, "include_path": [str(group), *folders], **common}
        ]
    return [
        {"kind": "lm_eval", "task": t, "include_path": [f], **common}
        for t, f in zip(TASKS, folders)
    ]


def experiment_yaml(experts, base: str, a: argparse.Namespace, seed: int, group: Path) -> dict:
    return {
        "name": "vs_mergekit_evolve",
        "models": experts,
        "base_model": base,
        "space": {
            "kind": "parameter",
            "merge_method": "dare_ties",
            "layer_groups": a.layer_groups,
            "params": ["weight", "density"],
            "bounds": {"weight": [0.0, 1.0], "density": [0.0, 1.0]},
            "x0": {"weight": 1 / len(experts), "density": 1.0},  # mergekit-evolve's x0
            "fixed": {"normalize": True},  # mergekit-evolve's default for dare_ties
            "dtype": a.dtype,
        },
        "fitness": {"tasks": lm_eval_tasks(a, group)},
        "driver": {"name": "cma_es", "options": {"sigma0": 1 / 6, "popsize": a.popsize}},
        "budget": {"max_evals": a.candidates},
        "seed": seed,
        "archive": {"top_k": 1},
        "evaluation": {"dtype": a.dtype, "threads": a.threads, "timeout_s": 3600},
        # the experts and the base only, as when the table was measured: the candidates per
        # hour are timed from the base's line, and task arithmetic's lambdas would come after it
        "baselines": {"task_arithmetic": []},
    }


def child_env(tmp: Path, a: argparse.Namespace, extra_path: Path | None = None) -> dict:
    env = dict(os.environ)
    paths = [str(extra_path)] if extra_path else []
    paths += [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS=str(a.threads),  # Ray keeps a set value for its workers
        MKL_NUM_THREADS=str(a.threads),
        HF_HOME=str(tmp / "hf"),  # caches stay in the temp dir
        TMPDIR=str(tmp),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def score_of(w: Watched, pattern: str) -> float | None:
    for _, line in reversed(w.lines):
        if m := re.search(pattern, line):
            return float(m.group(1))
    return None


def fail(tool: str, w: Watched, log: Path) -> None:
    tail = "\n".join(line for _, line in w.lines[-25:])
    sys.exit(f"{tool} exited with {w.rc}; last lines of its output ({log}):\n{tail}")


def run_mergekit(tmp: Path, experts, base, a, seed: int) -> dict:
    work = tmp / "mergekit"  # its working dir (pycma writes outcmaes/ there) and storage
    storage = work / "storage"
    storage.mkdir(parents=True)
    cfg = tmp / "genome.yml"
    cfg.write_text(yaml.safe_dump(genome_yaml(experts, base, a)))
    stub = placeholder_vllm(tmp / "placeholder_vllm")
    cmd = [sys.executable, str(Path(__file__).with_name("mergekit_evolve_cpu.py"))]
    cmd += ["--cpus", "1", "--ray-temp-dir", str(tmp / "ray"), "--", str(cfg)]
    # pycma stops once it has evaluated MORE than maxfevals: N - 1 gives N (a whole generation)
    cmd += ["--storage-path", str(storage), "--max-fevals", str(a.candidates - 1)]
    cmd += ["--no-vllm", "--no-merge-cuda", "--random-seed", str(seed)]
    cmd += ["--batch-size", str(a.batch_size), "--force-population-size", str(a.popsize)]
    for t in TASKS:
        cmd += ["--task-search-path", str(REPO / "fitness" / t)]
    log = tmp / "mergekit-evolve.log"
    w = run_watched(cmd, env=child_env(tmp, a, stub), watch=work, log=log)
    if w.rc != 0:
        fail("mergekit-evolve", w, log)
    cost = score_of(w, r"Best cost: (-?[\d.]+)")
    merged = {Path(p).parent for p in w.files_seen if "/merged/merged" in p}
    start, end = w.first_time("Received "), w.last_time("OPTIMIZATION COMPLETE")
    n = sum(int(m.group(1)) for _, s in w.lines if (m := re.search(r"Received (\d+) geno", s)))
    return summary(w, n, end - start, -cost, storage / "final_model", len(merged))


def run_evomerge(tmp: Path, experts, base, a, seed: int) -> dict:
    work = tmp / "evomerge"  # its working dir and run dir
    work.mkdir()
    exp = tmp / "experiment.yaml"
    exp.write_text(yaml.safe_dump(experiment_yaml(experts, base, a, seed, group_folder(tmp))))
    cmd = [sys.executable, "-m", "evomerge", "search", str(exp), "--run-dir", str(work / "run")]
    log = tmp / "evomerge.log"
    w = run_watched(cmd, env=child_env(tmp, a), watch=work, log=log)
    if w.rc != 0:
        fail("evomerge search", w, log)
    n = int(score_of(w, r"stopped: \w+; (\d+) evaluations"))
    start = w.last_time("base: fitness")  # the baselines (experts, base) are scored first
    end = w.last_time("stopped: ")
    best = score_of(w, r"winner \w+ +fitness ([\d.]+)")
    archive = next(line for _, line in w.lines if line.startswith("archive: "))
    return summary(w, n, end - start, best, Path(archive.split(": ", 1)[1]), None)


def summary(w: Watched, n: int, search_s: float, best: float, winner: Path, merged) -> dict:
    return {
        "candidates": n,
        "search_s": search_s,
        "cand_per_hour": 3600 * n / search_s,
        "wall_s": w.wall_s,
        "best_search": best,
        "winner": str(winner),
        "disk_total_mib": w.disk_total / MIB,
        "disk_peak_mib": w.disk_peak / MIB,
        "merged_folders_seen": merged,
        "rss_tree_peak_mib": w.rss_tree_peak / MIB,
        "rss_proc_peak_mib": w.rss_proc_peak / MIB,
    }


def validation_score(folder: Path, a: argparse.Namespace, group: Path) -> float:
    """The winner's mean exact match on the --val-items docs after each task's search items,
    scored the same way for both tools (evomerge's validation split, on the saved folder)."""
    from evomerge.eval_cli import load_model
    from evomerge.fitness import build_fitness, parse_fitness_config

    tasks = lm_eval_tasks(a, group)
    cfg = parse_fitness_config({"tasks": tasks, "validation": {"items": a.val_items}})
    fitness = build_fitness(cfg, split="validation")
    model, tokenizer = load_model(folder, dtype=a.dtype)
    return fitness.aggregate(fitness(model, tokenizer))


ROWS = (  # (key, label, format)
    ("cand_per_hour", "candidates per hour of search", "{:.0f}"),
    ("search_s", "search s (first candidate to last)", "{:.1f}"),
    ("wall_s", "whole command s", "{:.1f}"),
    ("best_search", "best search score", "{:.4f}"),
    ("validation", "winner's validation score", "{:.4f}"),
    ("disk_total_mib", "MiB written (every file, largest size)", "{:.1f}"),
    ("disk_peak_mib", "MiB on disk at once (peak)", "{:.1f}"),
    ("rss_tree_peak_mib", "peak RSS, process tree MiB", "{:.0f}"),
    ("rss_proc_peak_mib", "peak RSS, largest process MiB", "{:.0f}"),
)
TOOLS = ("mergekit-evolve", "evomerge")


def table(runs: list[dict]) -> str:
    med = {t: {k: statistics.median(r[t][k] for r in runs) for k, _, _ in ROWS} for t in TOOLS}
    lines = [f"{'medians of ' + str(len(runs)) + ' run(s)':<40}{TOOLS[0]:>17}{TOOLS[1]:>12}"]
    for key, label, fmt in ROWS:
        a, b = (fmt.format(med[t][key]) for t in TOOLS)
        lines.append(f"{label:<40}{a:>17}{b:>12}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=64, help="budget of each search")
    ap.add_argument("--runs", type=int, default=3, help="searches per tool (medians printed)")
    ap.add_argument("--quick", action="store_true", help="8 candidates, 1 run, 16+16 items")
    ap.add_argument("--popsize", type=int, default=8, help="CMA-ES candidates per generation")
    ap.add_argument("--items", type=int, default=50, help="search docs per task")
    ap.add_argument("--val-items", type=int, default=50, help="held-out docs per task")
    ap.add_argument("--layer-groups", type=int, default=2, choices=(1, 2, 4))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each evaluator")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--evomerge-tasks",
        choices=("group", "separate"),
        default="group",
        help="evomerge's fitness: the four tasks as one lm-eval group (one call, as "
        "mergekit-evolve) or as four entries (four calls a candidate)",
    )
    ap.add_argument("--out", help="also write the per-run figures and medians to this JSON")
    a = ap.parse_args()
    if a.quick:
        a.candidates, a.runs, a.popsize, a.items, a.val_items = 8, 1, 4, 16, 16
    if a.candidates % a.popsize:
        ap.error(
            f"--candidates {a.candidates} is not a multiple of --popsize {a.popsize}; "
            "mergekit-evolve's CMA-ES stops only after a whole generation"
        )
    if a.items + a.val_items > 200:
        ap.error("--items + --val-items must be <= 200 (each zoo task has 200 docs)")
    return a


def main() -> None:
    a = parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's bars while this script validates
    import logging

    import torch

    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    torch.set_num_threads(a.threads)
    experts, base = zoo_models()
    print(
        f"load {os.getloadavg()[0]:.2f}; {a.candidates} candidates (popsize {a.popsize}), "
        f"{a.items}+{a.val_items} docs per task, {a.dtype}, {a.threads} thread(s)",
        flush=True,
    )
    runs = []
    for r in range(a.runs):
        seed = a.seed + r
        with tempfile.TemporaryDirectory(prefix="vs-mkevolve-") as tmp:
            one = {}
            for tool, fn in zip(TOOLS, (run_mergekit, run_evomerge), strict=True):
                res = fn(Path(tmp), experts, base, a, seed)
                winner = Path(res.pop("winner"))
                res["validation"] = validation_score(winner, a, group_folder(Path(tmp)))
                one[tool] = res
                print(f"run {r + 1} {tool}: {json.dumps(res)}", flush=True)
        runs.append(one)
    print(f"load {os.getloadavg()[0]:.2f}")
    print(table(runs))
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
