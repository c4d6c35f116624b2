"""How a layer's experts are grouped: MC-SMoE's dominant experts and routing similarity, and
Sub-MoE's K-means on expert outputs.

A grouping is a list of groups, each a list of expert indices, the group's first index being
its representative (MC-SMoE's dominant expert; for Sub-MoE and the plain average, the member the
router chose most often): its router row is the merged expert's.
"""

from __future__ import annotations

import torch

from evomerge.errors import UserInputError


def check_keep(keep: int, num_experts: int, top_k: int) -> None:
    if not top_k <= keep < num_experts:
        raise UserInputError(
            f"--keep {keep}: the model has {num_experts} experts per layer and routes each token "
            f"to {top_k}; keep between {top_k} and {num_experts - 1}"
        )


def _by_frequency(groups: list[list[int]], frequency: torch.Tensor) -> list[list[int]]:
    """Each group with its most used member first, groups in the order of those members."""
    ordered = [sorted(g, key=lambda e: (-float(frequency[e]), e)) for g in groups]
    return sorted(ordered, key=lambda g: g[0])


def dominant_groups(frequency: torch.Tensor, logits: torch.Tensor, keep: int) -> list[list[int]]:
    """MC-SMoE's routing-guided grouping: the ``keep`` most frequently chosen experts
    are dominant; every other expert joins the dominant expert whose router logits over the
    calibration tokens (a column of ``logits`` [T, E]) are most cosine-similar to its own."""
    order = sorted(range(len(frequency)), key=lambda e: (-float(frequency[e]), e))
    dominant = order[:keep]
    cols = torch.nn.functional.normalize(logits.T.double(), dim=-1)  # [E, T]
    groups = {d: [d] for d in dominant}
    for e in order[keep:]:
        sims = cols[dominant] @ cols[e]
        groups[dominant[int(torch.argmax(sims))]].append(e)
    return [groups[d] for d in sorted(dominant)]


def output_kmeans_groups(
    outputs: torch.Tensor, frequency: torch.Tensor, keep: int, seed: int
) -> list[list[int]]:
    """Sub-MoE's adaptive expert clustering: K-means into ``keep`` clusters of the experts'
    outputs on the calibration tokens (``outputs`` [E, T, H], each flattened and scaled to unit
    length, so that Euclidean K-means ranks pairs by their cosine similarity)."""
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise UserInputError(
            "--method sub-moe and average cluster with scikit-learn's K-means: "
            "pip install 'evomerge[moe]'"
        ) from None
    flat = torch.nn.functional.normalize(outputs.reshape(outputs.shape[0], -1).double(), dim=-1)
    labels = KMeans(n_clusters=keep, n_init=10, random_state=seed).fit_predict(flat.numpy())
    groups = [[e for e in range(len(labels)) if labels[e] == c] for c in range(keep)]
    return _by_frequency([g for g in groups if g], frequency)
