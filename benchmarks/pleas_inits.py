"""PLeaS (Nasery et al. 2025) on the digits zoo's models trained from different initialisations,
against each source model, plain weight averaging, and permutation alone (Git Re-Basin's
activation matching, partial at sizes above 1), at one model's width (size 1), between (1.5) and
both models' width (size 2, nothing merged). Parameters: those a merged model needs, without
the structural zeros where one model's kept units would read the other's (a dense layout stores
them too; ``pleas.parameter_count``). Score: test accuracy (%) on the 360 test digits.

Two pairs, both from different random inits (``evomerge/zoo/train_digits.py``):
* ``init_0`` + ``init_1``: 64-128-128-10 MLPs trained on all digits (10 epochs): the same task,
  different inits, where averaging fails;
* ``half_0to4`` + ``half_5to9``: M2N2's 64-256-10 experts on digits 0-4 and 5-9 (2 epochs): different
  inits and different data, the paper's harder setting (each source knows half the classes).

Activations come from the 1,437 training images (the task's own data) or, for the ``proxy`` rows,
the same images rotated by 90° (a stand-in for the paper's public proxy data: no digit as the
models saw them). The merge itself is deterministic: no seeds to vary. With 360 test items one
item is 0.28 points.

The LM pair (``--lm``): lm-seeds' ``seed_0`` + ``seed_1``, 2-layer Llamas trained on one mixture
from different random inits (``evomerge/zoo/specs.py``), merged by ``model_merges/llama.py`` on
400 training items of their own five tasks (or, ``proxy``, of three digit tasks they never saw:
``lm_zoo.SEEDS_PROXY``). Scores: exact match (%) over the 5 x 200 test items of their tasks,
and the mean cross-entropy of the answer tokens on the same items (lower is better; it moves
where exact match is stuck at 0).

    python benchmarks/pleas_inits.py [--sizes 1 1.5 2] [--quick] [--lm]
"""

from __future__ import annotations

import argparse

import torch

from evomerge.model_merges import pleas
from evomerge.model_merges.digits import activation_inputs, layers_of, model_of
from evomerge.zoo.build import build
from evomerge.zoo.digits import digits_correct, load_digits_model

PAIRS = {
    "same data, different inits (init_0 + init_1)": ("init_0", "init_1"),
    "digits 0-4 / 5-9, different inits (half_0to4 + half_5to9)": ("half_0to4", "half_5to9"),
}


def accuracy(model: torch.nn.Module) -> float:
    correct = digits_correct(model)
    return 100.0 * sum(correct) / len(correct)


def merged(a, b, **options) -> tuple[torch.nn.Module, int]:
    layers, units = pleas.merge(
        layers_of(a), layers_of(b), activation_inputs(options.pop("data", "train")), **options
    )
    return model_of(layers), pleas.parameter_count(units)


def rows(a, b, sizes: list[float]) -> list[tuple[str, torch.nn.Module, int]]:
    one = sum(p.numel() for p in a.parameters())
    out = [("source A", a, one), ("source B", b, one)]
    out.append(("plain average", *merged(a, b, method="average")))
    for size in sizes:
        out.append((f"permutation only, size {size:g}", *merged(a, b, size=size, method="permute")))
        out.append((f"PLeaS, size {size:g}", *merged(a, b, size=size)))
    for size in sizes:
        label = f"PLeaS, size {size:g}, proxy data (rot90)"
        out.append((label, *merged(a, b, size=size, data="proxy:rot90")))
    return out


def lm_rows(a, b, tok, sizes: list[float]) -> list[tuple[str, torch.nn.Module]]:
    from evomerge.model_merges.llama import merge_llama
    from evomerge.model_merges.lm_zoo import SEEDS_PROXY, SEEDS_TASKS, task_texts

    own, proxy = task_texts(SEEDS_TASKS), task_texts(SEEDS_PROXY)
    out = [("source A (seed_0)", a), ("source B (seed_1)", b)]
    out.append(("plain average", merge_llama(a, b, [], tok, method="average")[0]))
    for size in sizes:
        for method, label in (("permute", "permutation only"), ("pleas", "PLeaS")):
            out.append(
                (
                    f"{label}, size {size:g}",
                    merge_llama(a, b, own, tok, size=size, method=method)[0],
                )
            )
    for size in sizes:
        label = f"PLeaS, size {size:g}, proxy data"
        out.append((label, merge_llama(a, b, proxy, tok, size=size)[0]))
    return out


@torch.no_grad()
def answer_loss(model, tok, tasks: list[str]) -> float:
    """Mean cross-entropy of the answer tokens (answer + newline) over the tasks' test items."""
    from evomerge.zoo.evaluate import load_task_items, task_dir

    losses = []
    for task in tasks:
        for prompt, answer in load_task_items(task_dir(task)):
            p = tok.encode(prompt, add_special_tokens=False)
            a = tok.encode(answer + "\n", add_special_tokens=False)
            labels = torch.tensor([[-100] * len(p) + a])
            losses.append(model(input_ids=torch.tensor([p + a]), labels=labels).loss.item())
    return sum(losses) / len(losses)


def exact_match(model, tok, tasks: list[str]) -> float:
    from evomerge.zoo.evaluate import evaluate_lm_task, task_dir

    scores = [evaluate_lm_task(model, tok, task_dir(t)).per_example for t in tasks]
    flat = [s for per_task in scores for s in per_task]
    return 100.0 * sum(flat) / len(flat)


def lm_main(sizes: list[float], quick: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.zoo.build import load_manifest

    folder = build("lm-seeds", quick=quick, progress=False)
    tasks = load_manifest(folder)["tasks"]
    a, b = (AutoModelForCausalLM.from_pretrained(folder / n).eval() for n in ("seed_0", "seed_1"))
    tok = AutoTokenizer.from_pretrained(folder / "seed_0")
    print("\nlm-seeds: seed_0 + seed_1, different inits, one mixture\n")
    print(
        "| model | parameters | MLP width | exact match (%) | answer loss |\n|---|---:|---:|---:|---:|"
    )
    for label, model in lm_rows(a, b, tok, sizes):
        count = sum(p.numel() for p in model.parameters())
        em, loss = exact_match(model, tok, tasks), answer_loss(model, tok, tasks)
        width = model.config.intermediate_size
        print(f"| {label} | {count:,} | {width} | {em:.1f} | {loss:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    ap.add_argument("--quick", action="store_true", help="the quick zoos (same pairs)")
    ap.add_argument("--lm", action="store_true", help="the LM pair (lm-seeds) instead of digits")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.lm:
        return lm_main(args.sizes, args.quick)
    folder = build("digits", quick=args.quick, progress=False)
    for title, (name_a, name_b) in PAIRS.items():
        a, b = (load_digits_model(folder / n) for n in (name_a, name_b))
        print(f"\n{title}\n\n| model | parameters | test accuracy (%) |\n|---|---:|---:|")
        for label, model, count in rows(a, b, args.sizes):
            print(f"| {label} | {count:,} | {accuracy(model):.1f} |")


if __name__ == "__main__":
    main()
