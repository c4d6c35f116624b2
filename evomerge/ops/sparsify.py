"""Sparsifiers of task vectors, the first half of generalized task arithmetic.

- magnitude: keep the top-``density`` fraction by |τ| (TIES-Merging, Yadav et al. 2023).
- random: Bernoulli(density) keep mask (DARE, Yu et al. 2024, "Language Models are Super Mario").
- magnitude_outliers: drop the top ``gamma`` fraction, then the smallest, to reach ``density``
  (Model Breadcrumbs, Davari & Belilovsky 2024).
- della_magprune: keep probabilities rising linearly with the magnitude rank within each row,
  in [density − ε, density + ε] (DELLA-Merging, Deep et al. 2024).

``rescale`` restores the L1 norm of the task vector after masking, as mergekit 0.1.5 does (the
DARE paper's 1/p rescale has the same expectation).
"""

from __future__ import annotations

import torch

from evomerge.errors import UserInputError
from evomerge.ops._registry import bernoulli_mask

_EPS = 1e-7


def _rescaled(tensor: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    masked = tensor * mask
    if not rescale:
        return masked
    before, after = tensor.abs().sum(), masked.abs().sum()
    if before < _EPS or after < _EPS:
        return masked
    return masked * (before / after)


def magnitude(tensor: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    k = max(1, int(density * tensor.numel()))
    order = torch.argsort(tensor.abs().reshape(-1), descending=True)
    mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    mask[order[:k]] = 1
    return _rescaled(tensor, mask.reshape_as(tensor), rescale)


def magnitude_outliers(
    tensor: torch.Tensor, density: float, gamma: float, rescale: bool
) -> torch.Tensor:
    if density >= 1:
        return tensor
    n = tensor.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)  # shrink the outlier cut when density asks for it
    order = torch.sort(tensor.abs().reshape(-1), descending=False).indices
    mask = torch.zeros(n, dtype=tensor.dtype, device=tensor.device)
    mask[order[bottom : bottom + keep]] = 1
    return _rescaled(tensor, mask.reshape_as(tensor), rescale)


def random(
    tensor: torch.Tensor, density: float, rescale: bool, generator: torch.Generator | None
) -> torch.Tensor:
    if density >= 1:
        return tensor
    mask = bernoulli_mask(torch.full_like(tensor, density), generator)
    return _rescaled(tensor, mask, rescale)


def della_magprune(
    tensor: torch.Tensor,
    density: float,
    epsilon: float,
    rescale: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise UserInputError(
            f"della: epsilon={epsilon} with density={density} leaves (0, 1); "
            "choose epsilon < min(density, 1 - density)"
        )
    rows = tensor if tensor.dim() >= 2 else tensor.unsqueeze(0)
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).to(rows.dtype) + 1
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    rank01 = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    probs = (density - epsilon) + rank01 * 2 * epsilon
    mask = bernoulli_mask(probs, generator)
    return _rescaled(rows, mask, rescale).reshape(tensor.shape)
