"""Spherical linear interpolation of two models — Shoemake (1985), "Animating rotation with
quaternion curves"; popular for LLM merging through mergekit.

mergekit semantics: the base model is the t = 0 endpoint, the other model the t = 1 endpoint;
the angle is taken between the whole (flattened, normalised) tensors; nearly colinear or
antipodal pairs (|cos| > 0.9995) fall back to linear interpolation.
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.merge.ops._registry import register_op

DOT_THRESHOLD = 0.9995


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The values of ((a / |a|) · (b / |b|)).sum() and c0 v0 + c1 v1 written with two scratch
    buffers instead of five fresh tensors (each fresh tensor of a merge-sized model costs its
    page faults): the same operations on the same values, so the same bits."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    scratch = torch.div(a, na)
    other = torch.div(b, nb)
    dot = scratch.mul_(other).sum().clamp(-1, 1)
    if dot.abs() > DOT_THRESHOLD:
        return (1 - t) * v0 + t * v1
    theta = torch.acos(dot)
    s = torch.sin(theta)
    out = torch.mul(v0, torch.sin((1 - t) * theta) / s, out=scratch.view(v0.shape))
    return out.add_(torch.mul(v1, torch.sin(t * theta) / s, out=other.view(v1.shape)))


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
