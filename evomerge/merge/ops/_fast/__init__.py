"""The fast path: the operators' bits (evomerge/merge/ops/*.py), faster. Private to the engine.

The engine asks ``plan`` once per tensor, with what it can offer beyond the operator's plain
``(tensors, base, *, generator, **params)``: a search worker's cached view of the tensor
(``resident``, a thunk: made only when used), a buffer for the result (``out``, the resident
model's parameter) and the merged file's dtype (``out_dtype``). ``plan`` answers a callable
that returns the merged tensor — taking a thunk that makes the tensor's generator — or None,
and the engine then runs the operator itself. Every answer gives the operator's bits
(tests/test_fused_gta.py, test_resident_cache.py, test_merge_speed_paths.py, test_exact_l1.py,
test_mt_uniform.py); without a C compiler (or with ``EVOMERGE_FUSED=0``) only the pure-torch
parts (block-wise TIES, the resident cache) remain.

Files: ``_fused_gta.c`` and its loader ``fused_gta.py`` (the one-pass kernel, radix top-k,
exact L1 sums, Mersenne-twister draws, bf16 linear); ``gta.py`` (generalized task arithmetic's
routes) with ``gta_fused_path.py`` (the kernel's per-model scalars), ``top_k.py`` and
``kept_ties.py`` (mergekit's argsort ties without the sort), ``l1.py``, ``mt_uniform.py``,
``packed_uniform.py`` and ``dare_l1.py`` (DARE's L1 tables); ``linear.py``;
``resident_cache.py`` (a search worker's cache of candidate-independent parts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from evomerge.merge.ops._fast import gta, linear
from evomerge.merge.ops._fast.fused_gta import deferred, finish
from evomerge.merge.ops.task_arithmetic import PRESETS

__all__ = ["deferred", "finish", "plan", "reads_stored_bf16"]

Run = Callable[[Callable[[], torch.Generator]], torch.Tensor]


def reads_stored_bf16(op: str) -> bool:
    """The engine may hand this operator's bfloat16 inputs as stored (not widened, not checked
    for NaN/Inf: ``plan``'s run does both, raising errors.NonFiniteInput), on the CPU."""
    return op == "linear"


def plan(
    op: str,
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    params: dict[str, Any],
    *,
    resident: Callable[[], Any] | None = None,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Run | None:
    """A faster run of operator ``op`` on these inputs with the operator's bits, or None."""
    first = base if base is not None else tensors[0]
    if out is not None and not _fits(out, first):
        out = None
    if op == "linear":
        return linear.plan(tensors, params, out, out_dtype)
    if op in PRESETS:
        return gta.plan(op, tensors, base, params, resident() if resident else None, out)
    return None


def _fits(out: torch.Tensor, like: torch.Tensor) -> bool:
    return (
        out.shape == like.shape
        and out.dtype == torch.float32 == like.dtype
        and out.device == like.device
        and out.is_contiguous()
    )
