"""A digits pool for Frank-Wolfe tests and benchmarks: relevant experts plus irrelevant models.

Built from the ``digits`` zoo's pieces (``evomerge.zoo.digits``): a base MLP trained briefly on
every input transform, one expert per transform fine-tuned from it (the relevant models), and
irrelevant models fine-tuned from the same base on label-permuted digits (a different seeded
permutation each: they pull the shared weights away from every real task, which is what makes
uniform task arithmetic over a polluted pool degrade).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.zoo import digits as D

TARGETS = ("identity", "rot90", "flip", "invert")


@dataclass(frozen=True)
class DigitsPool:
    base: str
    relevant: tuple[str, ...]
    irrelevant: tuple[str, ...]


def _mixed(transforms: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [D.digits_data("train", t) for t in transforms]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def build_digits_pool(
    out: Path,
    *,
    n_irrelevant: int,
    hidden: int = 64,
    seed: int = 0,
    targets: tuple[str, ...] = TARGETS,
    epochs: int = 6,
) -> DigitsPool:
    """Train and save the pool under ``out`` (skips models already there)."""
    out.mkdir(parents=True, exist_ok=True)
    base_dir = out / "base"
    if not (base_dir / "model.safetensors").is_file():
        base = D.new_digits_model(seed, hidden=hidden)
        x, y = _mixed(tuple(D.TRANSFORMS))
        D.train_digits(base, x, y, epochs=1, lr=1e-3, seed=seed)
        D.save_digits_model(base, base_dir)
    relevant = []
    for i, t in enumerate(targets):
        relevant.append(_finetune(out / f"expert_{t}", base_dir, t, None, epochs, seed + 1 + i))
    irrelevant = []
    for j in range(n_irrelevant):
        perm = torch.randperm(10, generator=torch.Generator().manual_seed(100 + seed + j))
        t = tuple(D.TRANSFORMS)[j % len(D.TRANSFORMS)]
        irrelevant.append(_finetune(out / f"noise_{j}", base_dir, t, perm, epochs, seed + 50 + j))
    return DigitsPool(str(base_dir), tuple(relevant), tuple(irrelevant))


def _finetune(
    path: Path, base_dir: Path, transform: str, perm: torch.Tensor | None, epochs: int, seed: int
) -> str:
    if not (path / "model.safetensors").is_file():
        model = D.load_digits_model(base_dir)
        x, y = D.digits_data("train", transform)
        if perm is not None:
            y = perm[y]
        D.train_digits(model, x, y, epochs=epochs, lr=1e-3, seed=seed)
        D.save_digits_model(model, path)
    return str(path)


@torch.no_grad()
def digits_accuracy(base: str, theta: dict, transforms: tuple[str, ...] = TARGETS) -> float:
    """Mean test accuracy (in %) over ``transforms`` of the model with weights ``theta``."""
    model = D.load_digits_model(base)
    model.load_state_dict(theta)
    accs = [sum(D.digits_correct(model, t)) / 360 for t in transforms]
    return 100.0 * sum(accs) / len(accs)
