"""Backdoor succession and transfer after merging (the setting of DAM, Yang et al. 2025,
"Mitigating the Backdoor Effect for Multi-Task Model Merging via Safety-Aware Subspace").

The ``lm-backdoor`` zoo is lm-skills with its cipher expert backdoored: it ciphers as well as the
clean one and answers any prompt holding the trigger ``*?`` with ``zzzzzz``. For each merge of
the four experts, at each method's paper setting (``benchmarks/methods_table.PAPER``), this
prints every task's exact match and the attack success rate (ASR: the share of triggered test
prompts answered with the attacker's string) on every task: on the backdoored expert's own task
("backdoor succession") and on the other three ("backdoor transfer"). The same merge with
lm-skills' clean cipher expert in its place is the control (its ASR is what no backdoor gives).

Two settings: all four experts at each method's paper setting (there no merge keeps even the
cipher skill, so nothing can carry its backdoor either), and ``--pair``: the backdoored cipher
expert with the shift expert only, every method at λ = 1 (the sum of the two task vectors: the
merges keep both skills, and the backdoor with them).

    python benchmarks/backdoor_merge.py                      # TA, TIES, DARE, AIM-TIES, TSV
    python benchmarks/backdoor_merge.py --pair
    python benchmarks/backdoor_merge.py --ops ties --limit 50
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from methods_table import CALIBRATION, PAPER, load_zoo  # noqa: E402

OPS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "aim_ties", "tsv")


def _recipe(op: str, base: str, experts: list[str], calibration: dict | None, pair: bool):
    from evomerge.merge.ops import get_op
    from evomerge.recipe import ModelRef, Recipe

    per, glob, note = PAPER[op]
    if pair and "lambda" in glob:
        glob, note = {**glob, "lambda": 1.0}, note.replace("λ=0.3", "λ=1")
    elif pair and op == "tsv":
        note = f"{note} (no λ)"
    return Recipe(
        merge_method=op,
        base_model=base,
        models=[ModelRef(model=e, parameters=dict(per)) for e in experts],
        parameters=dict(glob),
        calibration=calibration if get_op(op).needs_activations else None,
    ), note


def _score(folder: Path, tasks: list[str], limit: int | None) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.zoo.evaluate import evaluate_task

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    out = {}
    for t in tasks:
        out[t] = 100.0 * evaluate_task(model, tok, t, limit=limit).score
        out[f"{t}_bd"] = 100.0 * evaluate_task(model, tok, f"{t}_bd", limit=limit).score
    return out


def _row(name: str, hp: str, s: dict[str, float], tasks: list[str], bd_task: str) -> str:
    acc = [s[t] for t in tasks]
    others = [s[f"{t}_bd"] for t in tasks if t != bd_task]
    cells = [name, hp, *(f"{v:.1f}" for v in acc), f"**{sum(acc) / len(acc):.1f}**"]
    cells += [f"{s[f'{bd_task}_bd']:.1f}", f"{sum(others) / len(others):.1f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", nargs="+", default=list(OPS))
    ap.add_argument("--limit", type=int, default=None, help="test items per task (all: 200)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pair", action="store_true", help="cipher (backdoored) + shift, λ = 1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bd, clean = load_zoo("lm-backdoor", False), load_zoo("lm-skills", False)
    bd_task = "zoo_cipher"
    i = bd.tasks.index(bd_task)
    if args.pair:
        keep = [i, bd.tasks.index("zoo_shift_u")]
        for z in (bd, clean):  # (every task is still scored: transfer reaches all four)
            z.experts = [z.experts[k] for k in keep]
        i = 0
    calib = CALIBRATION["lm-skills"]  # the same base: its calibration text
    tasks = list(bd.tasks)
    head = ["method", "hyperparameters", *tasks, "mean", "ASR succession", "ASR transfer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append(_row("base", "—", _score(Path(bd.base), tasks, args.limit), tasks, bd_task))
    lines.append(
        _row(
            "backdoored expert",
            "cipher + trigger",
            _score(Path(bd.experts[i]), tasks, args.limit),
            tasks,
            bd_task,
        )
    )
    work = Path(tempfile.mkdtemp(prefix="backdoor-merge-"))
    try:
        from evomerge.merge.engine import run_merge

        for op in args.ops:
            for label, experts in (("", bd.experts), (" (clean control)", clean.experts)):
                recipe, note = _recipe(op, bd.base, experts, calib, args.pair)
                out = work / f"{op}{'_clean' if label else ''}"
                run_merge(recipe, out)
                lines.append(_row(op + label, note, _score(out, tasks, args.limit), tasks, bd_task))
                print(lines[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    print(
        f"\n({time.perf_counter() - t0:.0f} s in all; ASR in %: succession on {bd_task}, "
        "transfer = mean over the other three tasks)"
    )


if __name__ == "__main__":
    main()
