"""Exclusive knowledge and its compression (Twin-Merging, Lu et al. 2024, arXiv 2406.15479,
knowledge modularization): v_t = θ_t − θ*, each matrix kept as its rank-r truncated SVD
U_r Σ_r V_rᵀ (the best rank-r approximation in Frobenius norm). The paper gives no rule for 1-D tensors (the authors'
code compresses LoRA matrices only); a vector is its own SVD, so norm weights are kept whole."""

from __future__ import annotations

import torch


def compress(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B = U_r Σ_r [rows, r] and A = V_rᵀ [r, cols], r = min(rank, rows, cols):
    B @ A is delta's best rank-r approximation (delta itself at full rank)."""
    if delta.dim() != 2:
        raise ValueError(f"compress takes a matrix, got shape {tuple(delta.shape)}")
    u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    r = max(1, min(rank, s.numel()))
    return (u[:, :r] * s[:r]).to(torch.float32), vh[:r].to(torch.float32).contiguous()


def kept_fraction(delta: torch.Tensor, rank: int) -> float:
    """Share of delta's squared Frobenius norm the rank-r truncation keeps (1.0 at full rank)."""
    s = torch.linalg.svdvals(delta.to(torch.float64))
    total = float((s**2).sum())
    return 1.0 if total == 0.0 else float((s[:rank] ** 2).sum()) / total
