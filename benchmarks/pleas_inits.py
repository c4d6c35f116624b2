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

    python benchmarks/pleas_inits.py [--sizes 1 1.5 2] [--quick]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    ap.add_argument("--quick", action="store_true", help="the quick digits zoo (same pairs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = build("digits", quick=args.quick, progress=False)
    for title, (name_a, name_b) in PAIRS.items():
        a, b = (load_digits_model(folder / n) for n in (name_a, name_b))
        print(f"\n{title}\n\n| model | parameters | test accuracy (%) |\n|---|---:|---:|")
        for label, model, count in rows(a, b, args.sizes):
            print(f"| {label} | {count:,} | {accuracy(model):.1f} |")


if __name__ == "__main__":
    main()
