"""Linear (weighted) averaging — "Model soups" (Wortsman et al., 2022).

mergekit semantics: Σ w_i θ_i, divided by Σ w_i when ``normalize`` (default True). The base
model is not special: list it among the models to include it.
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.ops._registry import per_model, register_op


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
    out = torch.zeros_like(tensors[0])
    for t, w in zip(tensors, weights):
        out.add_(t, alpha=w)
    if p.get("normalize", True):
        out.div_(sum(weights))
    return out
