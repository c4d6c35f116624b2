"""Exclusive knowledge and its compression (Twin-Merging, Lu et al. 2024, arXiv 2406.15479,
knowledge modularization): v_t = θ_t − θ*, each matrix kept as its rank-r truncated SVD
U_r Σ_r V_rᵀ (the best rank-r approximation in Frobenius norm). The paper gives no rule for 1-D
tensors (the authors' code compresses LoRA matrices only); a vector is its own SVD, so norm
weights are kept whole.

LoRA experts (θ_t = θ_0 + s_t B_t A_t): with a linear shared merge (task arithmetic), θ* − θ_0
lies in the span of the adapters' factors, so v_t = Q_L C_t Q_Rᵀ with Q_L, Q_R orthonormal bases
of that span and a small k × k core C_t (k = the adapters' ranks summed). The SVD of C_t is the
SVD of v_t, so its rank-r truncation is the same best approximation ``compress`` gives, without
forming v_t (standard linear algebra, not a formula of the paper)."""

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


# Relative residual under which θ* − θ_0 counts as lying in the adapters' span: the float32
# rounding of a linear merge (task arithmetic, linear) is ~1e-6 of it; a sparsifying merge
# (TIES, DARE) leaves a residual of the order of the change itself.
SPAN_TOLERANCE = 1e-3


def adapter_span(
    factors: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal bases (Q_L [rows, k], Q_R [cols, k]) of the column spaces of the adapters'
    L's and the row spaces of their R's, k = Σ ranks (capped by the matrix's sides)."""
    q_left = torch.linalg.qr(torch.cat([f[0] for f in factors], dim=1)).Q
    q_right = torch.linalg.qr(torch.cat([f[1].T for f in factors], dim=1)).Q
    return q_left, q_right


def shared_core(shared_change: torch.Tensor, q_left, q_right) -> torch.Tensor | None:
    """Q_Lᵀ (θ* − θ_0) Q_R, or None when θ* − θ_0 is not inside the span (a nonlinear shared
    merge): then the exclusive parts are not low rank and take the full-matrix SVD."""
    d = shared_change.double()
    core = q_left.T @ d @ q_right
    residual = float(torch.linalg.norm(d - q_left @ core @ q_right.T))
    if residual > SPAN_TOLERANCE * max(float(torch.linalg.norm(d)), 1e-30):
        return None
    return core


def compress_core(
    core: torch.Tensor, q_left: torch.Tensor, q_right: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(B, A, kept, total) for delta = Q_L core Q_Rᵀ without forming delta: the SVD of the small
    k × k core gives delta's own SVD (Q_L U) Σ (Q_R V)ᵀ, so B = Q_L U_r Σ_r and A = (Q_R V_r)ᵀ
    are its best rank-r factors (delta exactly when k ≤ r); kept and total are ‖·‖² of the
    kept and of all singular values."""
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    r = max(1, min(rank, s.numel()))
    b = q_left @ (u[:, :r] * s[:r])
    a = vh[:r] @ q_right.T
    return b.float(), a.float().contiguous(), float((s[:r] ** 2).sum()), float((s**2).sum())


def pad_rank(b: torch.Tensor, a: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero columns of B / rows of A up to the module's rank r (zeros add nothing to B A)."""
    k = b.shape[1]
    if k >= r:
        return b[:, :r], a[:r]
    return torch.nn.functional.pad(b, (0, r - k)), torch.nn.functional.pad(a, (0, 0, 0, r - k))
