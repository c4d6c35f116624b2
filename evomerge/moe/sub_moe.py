"""Sub-MoE: Li, Zhu, Wang, Li, Gu, Han, Guo, "Sub-MoE: Efficient Mixture-of-Expert LLMs
Compression via Subspace Expert Merging", 2025 (arXiv:2506.23266; AAAI 2026).

Per layer: (1) adaptive expert clustering, K-means into ``keep`` clusters of the experts' outputs
on calibration tokens, compared by cosine similarity (``grouping.output_kmeans_groups``);
(2) experts union decomposition, one SVD of the group's weights concatenated side by side,
[W_1 ... W_k] = U S [V_1^T ... V_k^T], so that W_i = U S V_i^T with U shared; (3) the V_i merged
by activation frequency, V = sum_i f_i V_i / sum_i f_i; (4) the merged expert is U S V^T, with
U and S truncated to ``rank`` singular directions.

Choices the paper's text as read here (abstract and method summary; the full method section
and the authors' code, announced at github.com/lliai/MoERazor, were not available) leaves
open, made here and said so:
- which side is shared: every matrix is put with its hidden-size side (H, the side all experts
  share: gate and up's input, down's output) as the rows, so U spans a subspace of the model's
  hidden space and V_i lives on the expert's own neurons;
- the rank: a fraction of the full rank min(H, k * I) (``rank_fraction``), 1.0 by default;
- the router row of a merged expert: the row of the member the router chose most often (as
  MC-SMoE's dominant expert).

What follows from the algebra (checked by a test): at full rank U is square and orthogonal, so
U S (sum_i f_i V_i)^T = sum_i f_i W_i, the frequency-weighted average; below full rank the
merge is that average projected onto the top ``rank`` left singular vectors of the group,
U_r U_r^T sum_i f_i W_i. Sub-MoE differs from frequency-weighted averaging in its clustering and
its truncation only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from evomerge.errors import UserInputError
from evomerge.moe.experts import Expert
from evomerge.moe.grouping import output_kmeans_groups
from evomerge.moe.merged_layer import MergedLayer, group_weights, representative_rows
from evomerge.moe.routing_stats import LayerStats


def joint_svd(mats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """U [H, R], S [R] and each V_i [n_i, R] of [M_1 ... M_k] (each M_i [H, n_i]) = U S V^T."""
    u, s, vh = torch.linalg.svd(torch.cat([m.double() for m in mats], dim=1), full_matrices=False)
    splits = torch.split(vh.T, [m.shape[1] for m in mats], dim=0)
    return u, s, list(splits)


def subspace_merge(
    mats: Sequence[torch.Tensor], weights: torch.Tensor, rank_fraction: float = 1.0
) -> torch.Tensor:
    """U_r S_r (sum_i w_i V_i,r)^T for matrices ``mats`` [H, n] sharing their rows' space."""
    u, s, vs = joint_svd(mats)
    r = max(1, math.ceil(rank_fraction * len(s)))
    v = sum(float(w) * vi[:, :r] for w, vi in zip(weights, vs))
    return ((u[:, :r] * s[:r]) @ v.T).float()


def merge_group(
    experts: list[Expert], group: list[int], frequency: torch.Tensor, rank_fraction: float
) -> Expert:
    w = group_weights(frequency, group)
    members = [experts[e] for e in group]
    gate = subspace_merge([ex.gate.T for ex in members], w, rank_fraction).T
    up = subspace_merge([ex.up.T for ex in members], w, rank_fraction).T
    down = subspace_merge([ex.down for ex in members], w, rank_fraction)
    return Expert(gate.contiguous(), up.contiguous(), down)


def expert_outputs(experts: list[Expert], tokens: torch.Tensor) -> torch.Tensor:
    """[E, T, H]: every expert applied to every calibration token."""
    with torch.no_grad():
        return torch.stack([ex(tokens) for ex in experts])


def sub_moe_layer(
    experts: list[Expert],
    router: torch.Tensor,
    stats: LayerStats,
    keep: int,
    *,
    seed: int = 0,
    rank_fraction: float = 1.0,
) -> MergedLayer:
    if not 0.0 < rank_fraction <= 1.0:
        raise UserInputError(f"--rank-fraction {rank_fraction}: give a number in (0, 1]")
    groups = output_kmeans_groups(
        expert_outputs(experts, stats.tokens), stats.frequency, keep, seed
    )
    merged = [merge_group(experts, g, stats.frequency, rank_fraction) for g in groups]
    return MergedLayer(groups, merged, representative_rows(router, groups))
