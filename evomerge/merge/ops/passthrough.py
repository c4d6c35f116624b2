"""Passthrough with a scale: one model's tensor, multiplied by ``scale`` — the building block
of layer stacking (mergekit ``passthrough``; frankenmerges, and the data-flow space of Akiba et
al. 2024, "Evolutionary Optimization of Model Merging Recipes", whose input scales are folded
into the residual-writing projections as ``scale`` filter rules)."""

from __future__ import annotations

from typing import Any

import torch

from evomerge.merge.ops._registry import per_model, register_op


@register_op(
    "passthrough",
    needs_base=False,
    per_model_params=("scale",),
    defaults={"scale": 1.0},
    max_models=1,
    paper="mergekit passthrough; Akiba et al. 2024 (data-flow merging)",
    mergekit_name="passthrough",
    param_bounds={"scale": (0.0, 2.0)},
)
def passthrough(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    **p: Any,
) -> torch.Tensor:
    scale = per_model(p, "scale", len(tensors))[0]
    return tensors[0] * scale if scale != 1.0 else tensors[0].clone()
