"""MC-SMoE's merge step, M-SMoE: Li, Zhang, Yadav, Sung, Cheng, Bansal, Chen, "Merge, Then
Compress: Demystify Efficient SMoE with Hints from Its Routing Policy", ICLR 2024
(arXiv:2310.01334; authors' code: github.com/UNITES-Lab/MC-SMoE).

Per layer: (1) the ``keep`` experts the router chooses most often on calibration text are
dominant; (2) every other expert joins the dominant expert with the most similar router logits
(cosine over the calibration tokens); (3) each member's neurons are permuted to match its
dominant expert (weight matching); (4) the group becomes the average of its aligned members
weighted by their activation frequency, sum_i f_i W_i / sum_i f_i.

Alignment. The paper aligns experts before merging; the authors' code does it for Switch
Transformers (every expert matched to expert 0 by weight matching, ``permutation.py``) but its
Mixtral script merges without it. Here each member is matched to its group's dominant expert
(the one it is merged into) over the SwiGLU expert's three matrices; ``align=False`` gives the
Mixtral script's merge, which the benchmark also scores.

Routing. In the paper's form every original router row stays and the members of a group share
the merged expert (the router still has E outputs, E - keep of them duplicates): ``shared=True``
in ``evomerge.moe.reduce``. The smaller model that transformers loads has one router row per
expert; there the merged expert keeps its dominant expert's row (the tokens routed to a
non-dominant member go wherever the remaining rows send them).

The paper's compression step (the "C" of MC-SMoE: each merged expert decomposed into a low-rank
part plus a row-sparse part, pruned by sensitivity while the model is fine-tuned) is
``compress.py``, run after this merge by ``evomerge moe-reduce --compress``.
"""

from __future__ import annotations

import torch

from evomerge.moe.experts import Expert
from evomerge.moe.grouping import dominant_groups
from evomerge.moe.merged_layer import (
    MergedLayer,
    group_weights,
    representative_rows,
    weighted_sum,
)
from evomerge.moe.permutation import align_to
from evomerge.moe.routing_stats import LayerStats


def merge_group(
    experts: list[Expert], group: list[int], frequency: torch.Tensor, align: bool = True
) -> Expert:
    """Frequency-weighted average of ``group``'s experts, each aligned to ``group[0]`` first
    (``align=False``: as they are, as the authors' Mixtral script merges)."""
    dominant = experts[group[0]]
    members = [align_to(dominant, experts[e]) if align else experts[e] for e in group[1:]]
    return weighted_sum([dominant, *members], group_weights(frequency, group))


def mc_smoe_layer(
    experts: list[Expert], router: torch.Tensor, stats: LayerStats, keep: int, align: bool = True
) -> MergedLayer:
    groups = dominant_groups(stats.frequency, stats.logits, keep)
    merged = [merge_group(experts, g, stats.frequency, align) for g in groups]
    return MergedLayer(groups, merged, representative_rows(router, groups))
