"""Spherical linear interpolation of two models — Shoemake (1985), "Animating rotation with
quaternion curves"; popular for LLM merging through mergekit.

mergekit semantics: the base model is the t = 0 endpoint, the other model the t = 1 endpoint;
the angle is taken between the whole (flattened, normalised) tensors; nearly colinear or
antipodal pairs (|cos| > 0.9995) fall back to linear interpolation.
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.ops._registry import register_op

DOT_THRESHOLD = 0.9995


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a, b = v0.reshape(-1), v1.reshape(-1)
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > DOT_THRESHOLD:
        return (1 - t) * v0 + t * v1
    theta = torch.acos(dot)
    s = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / s) * v0 + (torch.sin(t * theta) / s) * v1


@register_op(
    "slerp",
    needs_base=True,
    global_params=("t",),
    defaults={},
    min_models=1,
    max_models=1,
    paper="Shoemake 1985 (SLERP), as used by mergekit",
    mergekit_name="slerp",
    param_bounds={"t": (0.0, 1.0)},
)
def slerp(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    **p: Any,
) -> torch.Tensor:
    return slerp_tensors(float(p["t"]), base, tensors[0])
