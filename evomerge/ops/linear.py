"""Linear (weighted) averaging — "Model soups" (Wortsman et al., 2022).

mergekit semantics: Σ w_i θ_i, divided by Σ w_i when ``normalize`` (default True). The base
model is not special: list it among the models to include it.

The engine hands linear bf16 checkpoints as stored (``raw_bf16``): the C kernel of
``fused_gta`` widens each input as it reads it, checks it for NaN/Inf in the same read, and
writes bfloat16 directly when that is the output dtype, so neither a float32 copy of the inputs
nor a float32 result is made. The bits are those of the float32 computation below, narrowed as
torch narrows (without a compiler, it runs on copies).

One fused pass when the caller gives ``out`` (a worker's resident parameter): the weighted sum
accumulates straight into it, no zeroed buffer, no copy. (The first term is ``w_0 · θ_0``
rather than ``0 + w_0 · θ_0``: the same value, except that a product −0 stays −0.)
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.checks import is_finite
from evomerge.errors import NonFiniteInput
from evomerge.ops import fused_gta
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
    raw_bf16=True,
)
def linear(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    **p: Any,
) -> torch.Tensor:
    weights = per_model(p, "weight", len(tensors))
    if any(t.dtype == torch.bfloat16 for t in tensors):  # bf16 checkpoints read as stored
        kernel = fused_gta.usable(tensors[0], tensors, None, dtype=torch.bfloat16, most=None)
        if out is None and kernel:
            bf16 = out_dtype == torch.bfloat16
            return fused_gta.linear_bf16(tensors, weights, p.get("normalize", True), bf16)
        if not all(is_finite(t) for t in tensors):
            raise NonFiniteInput("linear")
        tensors = [t.float() for t in tensors]
    out = torch.mul(tensors[0], weights[0], out=out)
    for t, w in zip(tensors[1:], weights[1:]):
        out.add_(t, alpha=w)
    if p.get("normalize", True):
        out.div_(sum(weights))
    return out
