"""lm-eval tasks scored by lm-eval's own ``hf`` backend against evomerge's two savings.

    python benchmarks/lm_eval_logits.py [--runs 5] [--threads 1] [--models smollm2,gemma3]
                                        [--tasks smollm2_chat_mc,...,real_target]

A log-likelihood task (multiple choice, a gold answer's log-likelihood) reads the logits of the
continuation's tokens only; lm-eval's ``hf`` backend projects every position onto the
vocabulary, and runs a context once per answer unless every answer is one token. evomerge's
lm_eval tasks wrap the resident model in ``ContinuationHFLM`` (evomerge/fitness/lm_eval_lm.py),
which asks the model for the positions lm-eval reads (``kept``) and runs a context once for
all its answers and a prompt its contexts share once for all of them (``shared``,
evomerge/fitness/lm_eval_shared_context.py), and for generation runs a prompt a batch's rows
share once (evomerge/fitness/lm_eval_shared_generation.py; ``kept`` alone changes nothing
there). For each
real model (float32, as a CPU worker holds it) and task this scores the task through
evomerge's fitness with lm-eval's own ``HFLM`` (``every``), ``kept`` alone and ``shared`` (both,
the default), in turn, ``--runs`` times each after one warm-up call, and prints the medians
and their ratios to ``every``. Every item's score must be equal between them (accuracies
exactly, log-likelihoods to 1e-5; checked on every run).

Tasks: ``smollm2_chat_mc`` (12 questions x 4 answers of 1.3 tokens on average, batch 12),
``real_target_gold_loglik`` (the smollm2-experts target scored by the gold answer's
log-likelihood: one answer per item, its 40 search items, batch 20), ``real_target_mc``
(the same 40 items as a choice among four answers of 4 tokens each, after the task's 4
worked examples as earlier turns, batch 20), ``real_target`` itself (the same 40 items and 4
examples, answers generated greedily, at most 12 tokens, scored by exact match) and
``real_target_0shot`` (the same without the examples, as experiments/real_ps.yaml runs it),
with the chat template on SmolLM2; Gemma-3-270M (a base model without one) gets them as plain
text. Run it alone: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "smollm2_chat_mc": {"batch_size": 12},
    "real_target_gold_loglik": {
        "include_path": str(ROOT / "fitness" / "real_target"),
        "system_instruction": "Answer briefly.",
        "limit": 40,
        "batch_size": 20,
    },
    "real_target_mc": {
        "include_path": str(ROOT / "fitness" / "real_target"),
        "system_instruction": "Answer briefly.",
        "num_fewshot": 4,
        "limit": 40,
        "batch_size": 20,
    },
    "real_target": {
        "system_instruction": "Answer briefly.",
        "num_fewshot": 4,
        "limit": 40,
        "batch_size": 20,
    },
    "real_target_0shot": {  # as experiments/real_ps.yaml runs it: a system turn, no examples
        "task": "real_target",
        "include_path": str(ROOT / "fitness" / "real_target"),
        "system_instruction": "Answer briefly.",
        "limit": 40,
        "batch_size": 20,
    },
}
VARIANTS = ("every", "kept", "shared")


def fitness(task: str, chat: bool):
    from evomerge.fitness import build_fitness, parse_fitness_config

    entry = {"kind": "lm_eval", "task": task, "include_path": str(ROOT / "fitness" / task)}
    entry |= TASKS[task] | {"apply_chat_template": chat}
    if chat and "num_fewshot" in entry:
        entry["fewshot_as_multiturn"] = True
    return build_fitness(parse_fitness_config({"tasks": [entry]}))


def plain_hflm(model, tokenizer, batch_size):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def scorers(task: str, chat: bool, model, tokenizer) -> dict:
    """Variant -> a fitness object holding its own HFLM wrapper after one call."""
    from evomerge.fitness import lm_eval_lm

    ours = lm_eval_lm.continuation_hflm
    kept = functools.partial(ours, share_contexts=False)
    made = {}
    for variant, wrapper in zip(VARIANTS, (plain_hflm, kept, ours), strict=True):
        made[variant] = fitness(task, chat)
        lm_eval_lm.continuation_hflm = wrapper  # the wrapper is made on the first call
        try:
            made[variant](model, tokenizer)
        finally:
            lm_eval_lm.continuation_hflm = ours
    return made


def timed(fit, model, tokenizer, row):
    t = time.perf_counter()
    score = fit(model, tokenizer).tasks[TASKS[row].get("task", row)]
    return time.perf_counter() - t, list(score.per_example)


def same(got: list, want: list) -> bool:
    """Item scores equal: accuracies exactly, log-likelihoods to float rounding (a pass of
    another shape may add in another order)."""
    return len(got) == len(want) and all(
        math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-5) for g, w in zip(got, want, strict=True)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--tasks", default=",".join(TASKS))
    args = ap.parse_args()
    unknown = set(args.tasks.split(",")) - set(TASKS)
    if unknown:
        ap.error(f"--tasks: {', '.join(sorted(unknown))} not among {', '.join(TASKS)}")
    torch.set_num_threads(args.threads)

    from evomerge.config import resolve_model_ref
    from evomerge.eval_cli import load_model

    print(f"load average before: {os.getloadavg()[0]:.2f}; torch threads {args.threads}")
    rows = []
    for name in args.models.split(","):
        folder = resolve_model_ref(
            {"smollm2": "zoo:smollm2/instruct", "gemma3": "zoo:gemma3/base"}[name]
        )
        model, tokenizer = load_model(Path(folder))
        chat = bool(getattr(tokenizer, "chat_template", None))
        for task in args.tasks.split(","):
            made = scorers(task, chat, model, tokenizer)
            times = {v: [] for v in VARIANTS}
            for _ in range(args.runs):
                scores = {}
                for variant in VARIANTS:
                    t, scores[variant] = timed(made[variant], model, tokenizer, task)
                    times[variant].append(t)
                for variant in ("kept", "shared"):
                    assert same(scores[variant], scores["every"]), f"{name} {task} {variant}"
            medians = [statistics.median(times[v]) for v in VARIANTS]
            dtype = str(model.dtype).removeprefix("torch.")
            rows.append((name, dtype, task, len(scores["every"]), *medians))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"\n{'model':8} {'dtype':8} {'task':24} {'items':>5} {'every s':>8} {'kept s':>7} "
        f"{'shared s':>8} {'kept':>6} {'shared':>6}"
    )
    for name, dtype, task, n, e, k, sh in rows:
        print(
            f"{name:8} {dtype:8} {task:24} {n:5d} {e:8.2f} {k:7.2f} {sh:8.2f} "
            f"{e / k:5.2f}x {e / sh:5.2f}x"
        )
    print(
        "(medians; ratios: every / variant; item scores equal on every run, log-likelihoods to 1e-5)"
    )


if __name__ == "__main__":
    main()
