"""The baseline: each group's plain (uniform) average, no alignment, no frequency weights.

Groups are Sub-MoE's (K-means on expert outputs, ``grouping.output_kmeans_groups``), so that
Sub-MoE and this baseline differ only in how a group becomes one expert; the router row is the
most frequently chosen member's, as for the other two methods.
"""

from __future__ import annotations

import torch

from evomerge.moe.experts import Expert
from evomerge.moe.grouping import output_kmeans_groups
from evomerge.moe.merged_layer import MergedLayer, representative_rows, weighted_sum
from evomerge.moe.routing_stats import LayerStats
from evomerge.moe.sub_moe import expert_outputs


def average_layer(
    experts: list[Expert], router: torch.Tensor, stats: LayerStats, keep: int, *, seed: int = 0
) -> MergedLayer:
    groups = output_kmeans_groups(
        expert_outputs(experts, stats.tokens), stats.frequency, keep, seed
    )
    merged = [
        weighted_sum([experts[e] for e in g], torch.full((len(g),), 1.0 / len(g))) for g in groups
    ]
    return MergedLayer(groups, merged, representative_rows(router, groups))
