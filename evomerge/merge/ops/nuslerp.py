"""NuSLERP: SLERP of two models driven by per-model weights, optionally over task vectors
(mergekit's "nuslerp"; SLERP from Shoemake 1985).

t = w_2 / (w_1 + w_2). With a base model, the two task vectors are interpolated and added to
the base. ``nuslerp_flatten`` (default True) takes one angle over the whole tensor; otherwise
per row (``nuslerp_row_wise``) or per column.
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.merge.ops._registry import per_model, register_op


def _nuslerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, dim: int, flatten: bool, eps: float = 1e-8
) -> torch.Tensor:
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    s = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / s
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if dim != -1 and not flatten:
        out = out.transpose(dim, -1)
    return out.reshape(shape)


def _nuslerp_op(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    **p: Any,
) -> torch.Tensor:
    w = per_model(p, "weight", len(tensors))
    total = sum(w)
    t = 0.5 if abs(total) < 1e-6 else w[1] / total
    dim = 0 if p.get("nuslerp_row_wise", False) else -1
    flatten = bool(p.get("nuslerp_flatten", True))
    if base is not None:
        return base + _nuslerp(t, tensors[0] - base, tensors[1] - base, dim=dim, flatten=flatten)
    return _nuslerp(t, tensors[0], tensors[1], dim=dim, flatten=flatten)


_COMMON = dict(
    per_model_params=("weight",),
    global_params=("nuslerp_row_wise", "nuslerp_flatten"),
    defaults={"nuslerp_row_wise": False, "nuslerp_flatten": True},
    min_models=2,
    max_models=2,
    param_bounds={"weight": (0.0, 1.0)},
)
register_op(
    "nuslerp",
    needs_base=False,
    paper="mergekit NuSLERP (SLERP, Shoemake 1985)",
    mergekit_name="nuslerp",
    **_COMMON,
)(_nuslerp_op)
# The same interpolation over task vectors; mergekit spells it nuslerp + base_model.
register_op(
    "nuslerp_ta",
    needs_base=True,
    paper="mergekit NuSLERP over task vectors",
    mergekit_name="nuslerp",
    **_COMMON,
)(_nuslerp_op)
