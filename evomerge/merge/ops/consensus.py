"""Consensus merging with TALL masks — Wang et al. 2024, "Localizing Task Information for
Improved Model Merging and Compression" (ICML).

τ_MTL = Σ_t τ_t (task arithmetic); task t's mask m_t = 1[|τ_t| ≥ λ_t·|τ_MTL − τ_t|]; keep the
coordinates where at least ``k`` masks agree (k = 2 drops "selfish" and "catastrophic"
weights); θ = θ_0 + α·(m ⊙ τ_MTL). k = 0 keeps everything, i.e. task arithmetic with λ = α.
Per-model ``weight`` scales τ_t before summing (1 = the paper); ``tall_lambda`` is λ_t
(the paper tunes it in [0.2, 0.6] on validation data).
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.merge.ops._registry import per_model, register_op


@register_op(
    "consensus",
    needs_base=True,
    per_model_params=("weight", "tall_lambda"),
    global_params=("k", "alpha"),
    defaults={"weight": 1.0, "tall_lambda": 0.4, "k": 2, "alpha": 1.0},
    paper="Wang et al. 2024, Localizing Task Information for Improved Model Merging and Compression",
    param_bounds={"weight": (0.0, 1.0), "tall_lambda": (0.0, 1.0), "alpha": (0.0, 2.0)},
)
def consensus(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    **p: Any,
) -> torch.Tensor:
    n = len(tensors)
    w, lam = per_model(p, "weight", n), per_model(p, "tall_lambda", n)
    taus = [(t - base) * wi for t, wi in zip(tensors, w)]
    mtl = torch.stack(taus).sum(dim=0)
    votes = torch.zeros_like(mtl)
    for tau, li in zip(taus, lam):
        votes += (tau.abs() >= li * (mtl - tau).abs()).to(mtl.dtype)
    keep = (votes >= int(p.get("k", 2))).to(mtl.dtype)
    return base + float(p.get("alpha", 1.0)) * keep * mtl
