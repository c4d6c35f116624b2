"""Model Stock — Jang et al. 2024, "Model Stock: All we need is just a few fine-tuned models".

t = k·cos φ / (1 + (k − 1)·cos φ), φ the mean pairwise angle between the fine-tunes' task
vectors; θ = t·mean(θ_i) + (1 − t)·θ_0. mergekit semantics: one angle per tensor (or per row
with ``filter_wise``), and the base is kept where the denominator vanishes.
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.merge.ops._registry import register_op


@register_op(
    "model_stock",
    needs_base=True,
    global_params=("filter_wise",),
    defaults={"filter_wise": False},
    min_models=2,
    paper="Jang et al. 2024, Model Stock",
    mergekit_name="model_stock",
)
def model_stock(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    **p: Any,
) -> torch.Tensor:
    shape = base.shape
    if p.get("filter_wise", False):
        w0 = base if base.dim() > 1 else base.unsqueeze(0)
        ws = [w if w.dim() > 1 else w.unsqueeze(0) for w in tensors]
    else:
        w0, ws = base.reshape(-1), [w.reshape(-1) for w in tensors]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = (torch.norm(a, dim=-1) * torch.norm(b, dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(dim=-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    denom = 1 + (k - 1) * cos
    singular = denom.abs() < 1e-6
    t = torch.where(
        singular,
        torch.zeros_like(cos),
        k * cos / torch.where(singular, torch.ones_like(denom), denom),
    )
    mean = sum(ws) / k
    return (t * mean + (1 - t) * w0).reshape(shape)
