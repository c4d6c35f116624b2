"""The fast path of linear (evomerge/merge/ops/linear.py): bfloat16 checkpoints read as stored, and a
given ``out`` filled directly.

bf16 inputs (the engine leaves linear's as stored: ``reads_stored_bf16``) go through the C
kernel (``fused_gta.linear_bf16``), which widens each input as it reads it, checks it for
NaN/Inf in the same read, and writes bfloat16 directly when that is the output dtype: no
float32 copy of the inputs, no float32 result. The bits are those of the float32 computation,
narrowed as torch narrows. Without the kernel the inputs are checked and widened here, and the
operator's own sum runs. ``out`` (a worker's resident parameter) receives the weighted sum in
the operator's order of operations: no zeroed buffer, no copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from evomerge.errors import NonFiniteInput
from evomerge.merge.checks import is_finite
from evomerge.merge.ops._fast import fused_gta
from evomerge.merge.ops._registry import per_model
from evomerge.merge.ops.linear import weighted_sum

Run = Callable[[Callable[[], torch.Generator]], torch.Tensor]


def plan(
    tensors: list[torch.Tensor],
    p: dict[str, Any],
    out: torch.Tensor | None,
    out_dtype: torch.dtype | None,
) -> Run | None:
    if out is None and not any(t.dtype == torch.bfloat16 for t in tensors):
        return None  # float32 into a new tensor: the operator itself
    return lambda _make_generator: _linear(tensors, p, out, out_dtype)


def _linear(
    tensors: list[torch.Tensor],
    p: dict[str, Any],
    out: torch.Tensor | None,
    out_dtype: torch.dtype | None,
) -> torch.Tensor:
    weights = per_model(p, "weight", len(tensors))
    normalize = p.get("normalize", True)
    if any(t.dtype == torch.bfloat16 for t in tensors):
        kernel = fused_gta.usable(tensors[0], tensors, None, dtype=torch.bfloat16, most=None)
        if out is None and kernel:
            return fused_gta.linear_bf16(tensors, weights, normalize, out_dtype == torch.bfloat16)
        if not all(is_finite(t) for t in tensors):
            raise NonFiniteInput("linear")
        tensors = [t.float() for t in tensors]
    return weighted_sum(tensors, weights, normalize, out=out)
