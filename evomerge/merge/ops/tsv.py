"""TSV-Merge — Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model
Merging" (CVPR 2025).

For a 2-D tensor (m × n) and T task vectors Δ_t = θ_t − θ_0:

    low rank      Δ_t ≈ U_t Σ_t V_tᵀ, the top k singular triplets, k = ⌊ρ · min(m, n) / T⌋ (≥ 1)
    concatenate   U = [U_1 … U_T] (m × Tk),  Σ = blockdiag(Σ_1 … Σ_T),  V = [V_1 … V_T] (n × Tk)
    orthogonalise U_⊥ = P Qᵀ where U = P S Qᵀ (thin SVD), likewise V_⊥ from V — the closest
                  matrices with orthonormal columns (orthogonal Procrustes), which removes the
                  overlap between the tasks' singular subspaces (the paper's task interference)
    recombine     Δ_m = U_⊥ Σ V_⊥ᵀ
    merge         θ = θ_0 + α · Δ_m

Tensors that are not 2-D get the mean task vector, θ = θ_0 + α · mean_t Δ_t, as in the authors'
code. ``rank_fraction`` ρ = 1 is the paper's setting (each task keeps 1/T of the rank, so the
concatenation spans at most the full rank); ``alpha`` α = 1.0 is the paper's default.

Computation: each truncated SVD comes from eigh of the task vector's smaller Gram matrix and
each polar factor from eigh of aᵀa (a (aᵀa)^(−1/2)), all in float64 — the same result as the
SVDs to float32 precision, ~3× faster on CPU (13.2 s → 4.6 s for four 1024 × 2816 task vectors,
one thread). Rank-deficient cases (a zero task vector, overlapping subspaces) use the SVD.

Note the 2-D part is a *sum* of the tasks' low-rank parts (task arithmetic with λ = α when the
tasks' singular subspaces are already orthogonal), while the other tensors are averaged.

R-TSVM ("Mix Data or Merge Models? Balancing the Helpfulness, Honesty, and Harmlessness of
LLMs", Yang et al. 2025) adds outlier-aware weighting and sparsity-adaptive rank selection; its
exact equations were not available to us, so it is not implemented here.
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.errors import UserInputError
from evomerge.merge.ops._registry import register_op

# Relative cut below which a singular value counts as zero: there the Gram route loses its
# accuracy (it squares the condition number), so such tensors take the exact SVD route instead.
_TOL = 1e-4


def _polar_svd(a: torch.Tensor) -> torch.Tensor:
    """The orthonormal polar factor P Qᵀ of ``a`` = P S Qᵀ (invariant to SVD sign choices)."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def _polar(a: torch.Tensor) -> torch.Tensor:
    """P Qᵀ for a tall ``a`` (float64) as a (aᵀa)^(−1/2): one eigh of the small Gram matrix.

    Falls back to the SVD when ``a`` is (nearly) rank-deficient — overlapping task subspaces or
    more concatenated vectors than rows — where (aᵀa)^(−1/2) does not exist.
    """
    if a.shape[0] < a.shape[1]:
        return _polar_svd(a)
    lam, q = torch.linalg.eigh(a.T @ a)
    if lam[-1] <= 0 or lam[0] <= _TOL**2 * lam[-1]:  # singular values S = √λ, cut at _TOL
        return _polar_svd(a)
    return a @ ((q / lam.sqrt()) @ q.T)


def _top_svd(d: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` singular triplets of a wide ``d`` (m ≤ n, float64) from eigh(d dᵀ).

    eigh of the m × m Gram matrix is several times faster than a full SVD of d on CPU; in float64
    its relative error is ~1e-16 · (s_max / s_i)², so ≤ 1e-8 above _TOL · s_max. Below that (a
    rank-deficient task vector, whose null-space vectors are arbitrary anyway) the SVD is used.
    """
    lam, u = torch.linalg.eigh(d @ d.T)
    lam, u = lam.flip(0)[:k], u.flip(1)[:, :k]
    s = lam.clamp_min(0).sqrt()
    if s[0] <= 0 or s[-1] <= _TOL * s[0]:
        uu, ss, vh = torch.linalg.svd(d, full_matrices=False)
        return uu[:, :k], ss[:k], vh[:k]
    return u, s, (u.T @ d) / s[:, None]


def tsv_matrix(deltas: list[torch.Tensor], rank_fraction: float) -> torch.Tensor:
    """Δ_m = U_⊥ Σ V_⊥ᵀ for 2-D task vectors ``deltas`` (computed in float64)."""
    t = len(deltas)
    m, n = deltas[0].shape
    if m > n:  # TSV of the transposes is the transpose of TSV: work on the wide side
        return tsv_matrix([d.T for d in deltas], rank_fraction).T
    k = max(1, int(rank_fraction * m / t))
    us, ss, vhs = zip(*(_top_svd(d.double(), k) for d in deltas))
    u_perp = _polar(torch.cat(us, dim=1))
    vh_perp = _polar(torch.cat(vhs, dim=0).T).T
    return ((u_perp * torch.cat(ss)) @ vh_perp).to(deltas[0].dtype)


@register_op(
    "tsv",
    needs_base=True,
    global_params=("rank_fraction", "alpha"),
    defaults={"rank_fraction": 1.0, "alpha": 1.0},
    paper="Gargiulo et al. 2025, Task Singular Vectors: Reducing Task Interference in Model Merging",
    param_bounds={"rank_fraction": (0.05, 1.0), "alpha": (0.0, 2.0)},
)
def tsv(
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    **p: Any,
) -> torch.Tensor:
    if not tensors:
        return base.clone()
    deltas = [t - base for t in tensors]
    alpha = float(p.get("alpha", 1.0))
    if base.dim() != 2:
        return base + alpha * (torch.stack(deltas).sum(dim=0) / len(deltas))
    rho = float(p.get("rank_fraction", 1.0))
    if not 0 < rho <= 1:
        raise UserInputError(f"tsv: rank_fraction must be in (0, 1], got {rho}")
    return base + alpha * tsv_matrix(deltas, rho)
