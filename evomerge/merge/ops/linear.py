"""Linear (weighted) averaging — "Model soups" (Wortsman et al., 2022).

mergekit semantics: Σ w_i θ_i, divided by Σ w_i when ``normalize`` (default True). The base
model is not special: list it among the models to include it. (The first term is ``w_0 · θ_0``
rather than ``0 + w_0 · θ_0``: the same value, except that a product −0 stays −0.)
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.merge.ops._registry import per_model, register_op


@register_op(
    "linear",
    needs_base=False,
    per_model_params=("weight",),
    global_params=("normalize",),
    defaults={"normalize": True},
    paper="Wortsman et al. 2022, Model soups",
    mergekit_name="linear",
    param_bounds={"weight": (0.0, 1.0)},
)
def linear(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    **p: Any,
) -> torch.Tensor:
    weights = per_model(p, "weight", len(tensors))
    return weighted_sum(tensors, weights, p.get("normalize", True))


def weighted_sum(
    tensors: list[torch.Tensor],
    weights: list[float],
    normalize: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ w_i t_i [/ Σ w_i], accumulated in order (into ``out`` when given: the same bits)."""
    out = torch.mul(tensors[0], weights[0], out=out)
    for t, w in zip(tensors[1:], weights[1:]):
        out.add_(t, alpha=w)
    if normalize:
        out.div_(sum(weights))
    return out
