"""Multi-SLERP: barycentric interpolation of N models on a hypersphere (mergekit 0.1.5's
``multislerp``; C. Goddard, "Multi-SLERP", goddard.blog, after Buss & Fillmore 2001, "Spherical
averages and applications to spherical splines and interpolation").

Each input x_i (a task vector x_i = θ_i − θ_0 when there is a base) is flattened and split into
its norm r_i and direction u_i = x_i / (r_i + ε). With weights w (normalised to sum 1 when
``normalize_weights``):

    m = Σ w_i u_i / ‖Σ w_i u_i‖                      the weighted Euclidean mean direction
    t = Σ w_i (u_i − ⟨u_i, m⟩ m)                     interpolation in the tangent space at m
    y = cos(‖t‖) m + sin(‖t‖) t / ‖t‖                 exponential map back to the sphere
    θ = θ_0 + (Σ w_i r_i) · y                        rescaled to the weighted mean norm

(‖t‖ carries mergekit's + ε.) One input is returned unchanged. Two inputs whose weighted
directions cancel fall back to linear interpolation; more than two raise an error, as in
mergekit. Numbers match mergekit 0.1.5 (see tests/test_ops_papers.py).
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.errors import UserInputError
from evomerge.merge.ops._registry import per_model, register_op


def _multislerp(xs: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Multi-SLERP of the rows of ``xs`` (N, D) with weights ``w`` (N,)."""
    norms = torch.norm(xs, dim=-1, keepdim=True)
    units = xs / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if xs.shape[0] == 2:
            return xs[0] * w[0] + xs[1] * w[1]
        raise UserInputError(
            "multislerp: the weighted mean of the models' directions is zero (antipodal models "
            "with balancing weights); change the models' weights"
        )
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * w.view(-1, 1)).sum(0)
    tnorm = torch.norm(tangent) + eps
    out = mean * torch.cos(tnorm) + tangent * (torch.sin(tnorm) / tnorm)
    return out * (norms.squeeze(-1) * w).sum()


def _multislerp_op(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    **p: Any,
) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0].clone()
    w = torch.tensor(per_model(p, "weight", len(tensors)), dtype=tensors[0].dtype)
    if p.get("normalize_weights", True):
        w = w / w.sum()
    xs = torch.stack([(t - base if base is not None else t).reshape(-1) for t in tensors])
    out = _multislerp(xs, w.to(xs.device), float(p.get("eps", 1e-8))).reshape(tensors[0].shape)
    return out + base if base is not None else out


_COMMON = dict(
    per_model_params=("weight",),
    global_params=("normalize_weights", "eps"),
    defaults={"normalize_weights": True, "eps": 1e-8},
    mergekit_name="multislerp",
    param_bounds={"weight": (0.0, 1.0)},
)
register_op(
    "multislerp",
    needs_base=False,
    paper="mergekit Multi-SLERP (Goddard; Buss & Fillmore 2001, spherical averages)",
    **_COMMON,
)(_multislerp_op)
# The same over task vectors; mergekit spells it multislerp + base_model.
register_op(
    "multislerp_ta",
    needs_base=True,
    paper="mergekit Multi-SLERP over task vectors (Goddard; Buss & Fillmore 2001)",
    **_COMMON,
)(_multislerp_op)
