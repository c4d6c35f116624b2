"""Every registered merge operator at its paper's default hyperparameters, plus AdaMerging, on the
zoo: per-task and mean scores and wall time, one markdown table per zoo (the small analog of
FusionBench's multi-task tables).

* ``digits``: the four transform experts (rot180, flip, invert, roll) fine-tuned from one base;
  score = test accuracy (%) under each transform, and their mean.
* ``lm-skills``: the skill experts of the LM zoo; score = exact match (%) of each expert's task
  with the zoo's fast evaluator (``evomerge.zoo.evaluate``), and their mean. A zoo that cannot be
  built yet is reported and skipped.

The operator list is ``evomerge.merge.ops.list_ops()`` at run time. ``PAPER`` holds the hyperparameters
the papers use by default where they differ from the registry's (which follow mergekit); an
operator not in ``PAPER`` runs with the registry defaults (weight 1 per model) and says so. An
operator that cannot take the zoo's expert count (SLERP-style pairs, passthrough) is listed as
skipped. AdaMerging (``evomerge.drivers.adamerging``) runs task-wise and layer-wise with the
paper's settings (lambda init 0.3, Adam lr 1e-3, 500 steps, 16 unlabelled test inputs per task).
Wall time is the method's own cost (merge, plus AdaMerging's optimisation), not the scoring.

    python benchmarks/methods_table.py                     # digits and lm-skills
    python benchmarks/methods_table.py --zoo digits --steps 500
    python benchmarks/methods_table.py --zoo lm-skills --ops ties aim_ties   # some rows only

AIM rows (``aim_*``) time the whole merge, the base's forward pass over the calibration text
included (once per process: the first AIM row pays it).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# op -> (per-model params, global params, where the values come from)
PAPER: dict[str, tuple[dict, dict, str]] = {
    "linear": ({"weight": 1.0}, {"normalize": True}, "uniform soup"),
    "task_arithmetic": ({"weight": 1.0}, {"lambda": 0.3}, "λ=0.3"),
    "ties": (
        {"weight": 1.0, "density": 0.2},
        {"normalize": True, "lambda": 1.0},
        "top-20 %, disjoint mean, λ=1",
    ),
    "dare_linear": (
        {"weight": 1.0, "density": 0.1},
        {"rescale": True, "lambda": 0.3},
        "drop p=0.9 + rescale, TA λ=0.3",
    ),
    "dare_ties": (
        {"weight": 1.0, "density": 0.1},
        {"rescale": True, "normalize": True, "lambda": 1.0},
        "drop p=0.9 + rescale, TIES election, λ=1",
    ),
    "breadcrumbs": (
        {"weight": 1.0, "density": 0.15, "gamma": 0.01},
        {"lambda": 0.3},
        "mask bottom 85 % + top 1 %, λ=0.3",
    ),
    "breadcrumbs_ties": (
        {"weight": 1.0, "density": 0.15, "gamma": 0.01},
        {"normalize": True, "lambda": 1.0},
        "breadcrumbs mask, TIES, λ=1",
    ),
    "della": (
        {"weight": 1.0, "density": 0.3, "epsilon": 0.1},
        {"normalize": True, "rescale": True, "lambda": 1.0},
        "keep 30 %, ε=0.1, λ=1",
    ),
    "della_linear": (
        {"weight": 1.0, "density": 0.3, "epsilon": 0.1},
        {"rescale": True, "lambda": 0.3},
        "keep 30 %, ε=0.1, λ=0.3",
    ),
    "consensus": ({}, {}, "k=2, TALL λ_t=0.4, α=1"),
    "model_stock": ({}, {}, "no hyperparameters"),
    "pcb": ({}, {}, "keep r=10 %, λ=1"),
    "tsv": ({}, {}, "rank 1/T per task, α=1"),
    "multislerp": ({"weight": 1.0}, {}, "equal weights"),
    "multislerp_ta": ({"weight": 1.0}, {}, "equal weights, over task vectors"),
}
# AIM (Nobari et al. 2025) over each inner method at that method's setting above, ω = 0.4 (the
# Long-to-Short study's AIM-Ties), so that each AIM row reads against its inner method's row.
for _inner in ("task_arithmetic", "ties", "dare_ties", "dare_linear"):
    _per, _glob, _note = PAPER[_inner]
    PAPER[f"aim_{_inner}"] = (_per, {**_glob, "omega": 0.4}, f"AIM ω=0.4 over {_inner}: {_note}")
# AIM's calibration text per zoo (the base's own pretraining mixture: evomerge.zoo.calibration)
CALIBRATION = {"lm-skills": {"file": "fitness/calibration/lm-skills.txt", "block_size": 64}}


@dataclass
class Zoo:
    name: str
    base: str
    experts: list[str]
    tasks: list[str]  # one per expert, same order
    kind: str  # digits | lm
    scorer: Any = None

    def score(self, folder: Path) -> dict[str, float]:
        return self.scorer(folder)


@dataclass
class Row:
    method: str
    hparams: str
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = math.nan
    note: str = ""


# ---- zoos ---------------------------------------------------------------------------------------
def load_zoo(name: str, quick: bool) -> Zoo:
    from evomerge.zoo.build import build, load_manifest

    folder = build(name, quick=quick, progress=False)
    man = load_manifest(folder)
    experts = [
        (m, e)
        for m, e in man["models"].items()
        if e.get("role") == "expert" and (man["kind"] != "digits" or e.get("group") == "transforms")
    ]
    base = str(folder / man["models"]["base"]["path"])
    paths = [str(folder / e["path"]) for _, e in experts]
    tasks = [e["expert_in"] for _, e in experts]
    zoo = Zoo(name, base, paths, tasks, man["kind"])
    zoo.scorer = _digits_scorer(tasks) if man["kind"] == "digits" else _lm_scorer(tasks, base)
    return zoo


def _digits_scorer(tasks: list[str]):
    from evomerge.zoo.digits import digits_correct, load_digits_model

    def score(folder: Path) -> dict[str, float]:
        model = load_digits_model(folder)
        out = {}
        for t in tasks:
            c = digits_correct(model, t.removeprefix("digits_"))
            out[t] = 100.0 * sum(c) / len(c)
        return out

    return score


def _lm_scorer(tasks: list[str], base: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.zoo.evaluate import evaluate_task

    tok = AutoTokenizer.from_pretrained(base)

    def score(folder: Path) -> dict[str, float]:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        return {t: 100.0 * evaluate_task(model, tok, t).score for t in tasks}

    return score


# ---- methods ------------------------------------------------------------------------------------
def op_recipe(op: str, zoo: Zoo):
    """(recipe, hyperparameter text) for ``op`` at its paper defaults, or (None, why skipped)."""
    from evomerge.merge.ops import get_op
    from evomerge.recipe import ModelRef, Recipe

    spec, k = get_op(op), len(zoo.experts)
    if spec.max_models is not None and spec.max_models < k:
        what = "exactly 2" if spec.min_models == spec.max_models == 2 else f"≤ {spec.max_models}"
        return None, f"skipped: takes {what} models, the zoo has {k} experts"
    if spec.min_models > k:
        return None, f"skipped: needs ≥ {spec.min_models} models"
    per, glob, note = PAPER.get(op, (None, None, None))
    if per is None:
        per = {"weight": 1.0} if "weight" in spec.per_model_params else {}
        glob, note = {}, "registry defaults (no paper setting recorded)"
    missing = [p for p in spec.required if p not in per and p not in glob]
    if missing:
        return None, f"skipped: needs {missing}, no default"
    calibration = CALIBRATION.get(zoo.name) if spec.needs_activations else None
    if spec.needs_activations and calibration is None:
        return None, "skipped: reads a causal LM's activations on calibration text"
    models = [ModelRef(model=e, parameters=dict(per)) for e in zoo.experts]
    recipe = Recipe(
        merge_method=op,
        base_model=zoo.base if spec.needs_base else None,
        models=models,
        parameters=dict(glob),
        calibration=calibration,
    )
    return recipe, note


def run_op(op: str, zoo: Zoo, work: Path) -> Row:
    from evomerge.merge.engine import run_merge

    recipe, note = op_recipe(op, zoo)
    if recipe is None:
        return Row(op, "—", note=note)
    out = work / op
    t0 = time.perf_counter()
    try:
        run_merge(recipe, out)
    except Exception as err:  # noqa: BLE001 - a failing operator is a row, not a crash
        return Row(op, note, note=f"failed: {type(err).__name__}: {err}"[:160])
    seconds = time.perf_counter() - t0
    return Row(op, note, zoo.score(out), seconds)


def run_adamerging_row(zoo: Zoo, granularity: str, steps: int, work: Path) -> Row:
    from evomerge.drivers.adamerging import AdaMerging
    from evomerge.merge.engine import run_merge
    from evomerge.spaces.fw_pool import FWPoolSpace
    from evomerge.workers.gradient_runner import run_adamerging

    if zoo.kind == "digits":
        obj = {"kind": "digits", "transforms": [t.removeprefix("digits_") for t in zoo.tasks]}
    else:
        obj = {"kind": "lm", "tasks": list(zoo.tasks)}
    t0 = time.perf_counter()
    space = FWPoolSpace(zoo.base, zoo.experts, granularity=granularity)
    drv = AdaMerging.for_space(space, steps=steps, objective=obj)
    steps_run = run_adamerging(space, drv)
    out = work / f"adamerging_{granularity}"
    run_merge(space.decode(drv.coefficients.reshape(-1)), out)
    seconds = time.perf_counter() - t0
    h0, h1 = steps_run[0].loss, steps_run[-1].loss
    lam = drv.coefficients
    lam_txt = (
        "λ=" + ",".join(f"{v:.2f}" for v in lam[0])
        if granularity == "task"
        else f"λ∈[{lam.min():.2f},{lam.max():.2f}]"
    )
    hp = f"{steps} Adam steps, lr 1e-3, init 0.3; H {h0:.3f}→{h1:.3f}; {lam_txt}"
    return Row(f"adamerging ({granularity}-wise)", hp, zoo.score(out), seconds)


def reference_rows(zoo: Zoo) -> list[Row]:
    rows = [Row("base (pretrained)", "—", zoo.score(Path(zoo.base)), 0.0)]
    own = {}
    for path, task in zip(zoo.experts, zoo.tasks, strict=True):
        own[task] = zoo.score(Path(path))[task]
    rows.append(Row("individual experts", "each expert on its own task", own, 0.0))
    return rows


# ---- table --------------------------------------------------------------------------------------
def table(zoo: Zoo, rows: list[Row]) -> str:
    head = ["method", "hyperparameters", *zoo.tasks, "mean", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if not r.scores:
            cells = [r.method, r.hparams, *(["—"] * len(zoo.tasks)), "—", "—"]
            cells[1] = r.note
        else:
            vals = [r.scores[t] for t in zoo.tasks]
            mean = sum(vals) / len(vals)
            cells = [
                r.method,
                r.hparams,
                *(f"{v:.1f}" for v in vals),
                f"**{mean:.1f}**",
                f"{r.seconds:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _brief(r: Row) -> str:
    if not r.scores:
        return f"{r.method}: {r.note}"
    vals = " ".join(f"{k}={v:.1f}" for k, v in r.scores.items())
    return (
        f"{r.method}: {vals} mean={sum(r.scores.values()) / len(r.scores):.1f} ({r.seconds:.1f} s)"
    )


def run_zoo(name: str, args) -> str:
    from evomerge.merge.ops import list_ops

    try:
        zoo = load_zoo(name, args.quick)
    except Exception as err:  # noqa: BLE001 - e.g. lm-skills not implemented yet
        return f"### {name}\n\nnot run: the zoo cannot be built ({type(err).__name__}: {err})\n"
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix=f"methods-{name}-"))
    try:
        rows = reference_rows(zoo)
        for op in args.ops or list_ops():
            rows.append(run_op(op, zoo, work))
            print(f"  {name}: {_brief(rows[-1])}", flush=True)  # partial results survive a kill
        for g in ("task", "layer") if not args.ops else ():
            rows.append(run_adamerging_row(zoo, g, args.steps, work))
            print(f"  {name}: {_brief(rows[-1])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ran = [r for r in rows[2:] if r.scores]
    best = max(ran, key=lambda r: sum(r.scores.values()))
    summary = f"best merge by mean: {best.method}"
    return f"### {name} ({len(zoo.experts)} experts)\n\n{table(zoo, rows)}\n\n{summary}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", nargs="+", default=["digits", "lm-skills"])
    ap.add_argument("--steps", type=int, default=500, help="AdaMerging Adam steps (paper: 500)")
    ap.add_argument("--quick", action="store_true", help="the zoos' quick builds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny models)")
    ap.add_argument("--json", type=Path, help="also write the tables here")
    ap.add_argument("--ops", nargs="+", help="only these operators (and no AdaMerging rows)")
    args = ap.parse_args()
    out = {}
    for name in args.zoo:
        t0 = time.perf_counter()
        out[name] = run_zoo(name, args)
        print(out[name])
        print(f"({name}: {time.perf_counter() - t0:.0f} s in all)\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
