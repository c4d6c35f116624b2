"""PCB-Merging — Du et al., "Parameter Competition Balancing for Model Merging" (NeurIPS 2024).

With task vectors τ_i = θ_i − θ_0 (i = 1..N), each of D elements, the paper scores every element:

    intra-balancing   β_intra,i = Softmax(N · Norm(τ_i ⊙ τ_i))
    inter-balancing   β_inter,i = Σ_{j=1..N} Softmax(Norm(τ_i ⊙ τ_j))
    PCB matrix        β_i = β_intra,i ⊙ β_inter,i
    drop              m_i,d = 1[β_i,d ≥ sorted(β_i)[(1 − r)·D]]   (keep the top r of β_i)
    rescale / fuse    τ_m = Σ_i (m_i ⊙ β_i ⊙ τ_i) / Σ_i (m_i ⊙ β_i)
    merge             θ_m = θ_0 + λ · τ_m

Softmax runs over the D elements of one task's score; Norm is min–max normalisation to [0, 1]
over those elements (the official code's ``normalize``; a constant tensor maps to 0). Where every
model's score was dropped the fused delta is 0 (the base is kept).

Choices and departures, on purpose:
- Granularity is one tensor (mergekit-style per-tensor operators); the paper flattens the whole
  model into one vector, so its softmax and drop quantile run over all parameters at once.
- ``density`` is the paper's r, the fraction of scores *kept* per model — the official code's
  ``pcb_ratio`` (default 0.1, i.e. drop the lowest 90 %). Elements tied with the threshold are kept.
- The official code replaces the two softmaxes by exp(N·Norm(|τ_i|)²) and tanh(τ_i · Σ_j τ_j) and
  min–max-normalises the kept scores before fusing; this file follows the paper's equations.
- The fusion weights are computed in log space (a softmax over D elements is ~1/D, and the
  product of two is ~1/D², which would underflow float32 for embedding matrices).
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.merge.ops._registry import register_op


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Min–max normalise each row to [0, 1]; a constant row becomes 0."""
    lo = x.amin(dim=-1, keepdim=True)
    span = x.amax(dim=-1, keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1), torch.zeros_like(x))


def pcb_log_scores(taus: torch.Tensor) -> torch.Tensor:
    """log β_i for flattened task vectors ``taus`` of shape (N, D)."""
    n = taus.shape[0]
    log_intra = torch.log_softmax(n * _minmax(taus * taus), dim=-1)
    inter = torch.zeros_like(taus)
    for j in range(n):
        inter += torch.softmax(_minmax(taus * taus[j]), dim=-1)
    return log_intra + torch.log(inter)


def keep_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Per row, True for the top ``density`` fraction of scores (ties with the cut kept)."""
    d = scores.shape[-1]
    if density >= 1:
        return torch.ones_like(scores, dtype=torch.bool)
    k = max(1, int(density * d)) if density > 0 else 0
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    cut = torch.kthvalue(scores, d - k + 1, dim=-1, keepdim=True).values
    return scores >= cut


@register_op(
    "pcb",
    needs_base=True,
    global_params=("density", "lambda"),
    defaults={"density": 0.1, "lambda": 1.0},
    paper="Du et al. 2024, Parameter Competition Balancing for Model Merging (PCB-Merging)",
    param_bounds={"density": (0.01, 1.0), "lambda": (0.0, 2.0)},
)
def pcb(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    **p: Any,
) -> torch.Tensor:
    if not tensors:
        return base.clone()
    taus = torch.stack([(t - base).reshape(-1) for t in tensors])
    log_beta = pcb_log_scores(taus)
    keep = keep_mask(log_beta, float(p.get("density", 0.1)))  # log is monotone: same ranking
    masked = torch.where(keep, log_beta, torch.full_like(log_beta, -torch.inf))
    any_kept = keep.any(dim=0)
    # β̂_i / Σ_j β̂_j as a softmax over models; columns with nothing kept are zeroed after.
    weights = torch.softmax(torch.where(any_kept, masked, torch.zeros_like(masked)), dim=0)
    fused = torch.where(any_kept, (weights * taus).sum(dim=0), torch.zeros_like(taus[0]))
    return base + float(p.get("lambda", 1.0)) * fused.reshape(base.shape)
