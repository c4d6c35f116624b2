"""The engine's route to an operator for tests: the fast path's run when it answers
(``evomerge.merge.ops._fast.plan``), else the operator itself — as ``evomerge.merge.compute``."""

from __future__ import annotations

from typing import Any

import torch

from evomerge.merge.ops import OPS, _fast


def run_fast(
    name: str,
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    p: dict[str, Any],
    *,
    generator: torch.Generator | None = None,
    resident: Any = None,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``resident``: a ``ResidentCache.for_task`` view (it then makes the generator)."""
    view = (lambda: resident) if resident is not None else None
    fast = _fast.plan(name, tensors, base, p, resident=view, out=out, out_dtype=out_dtype)
    if fast is None:
        return OPS[name].fn(tensors, base, generator=generator, **p)
    return fast(lambda: generator)
