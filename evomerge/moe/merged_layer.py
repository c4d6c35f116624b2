"""What a method makes of one MoE layer: its groups and one merged expert and router row each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from evomerge.moe.experts import Expert


@dataclass(frozen=True)
class MergedLayer:
    groups: list[list[int]]  # original expert indices; group[0] gives the router row
    experts: list[Expert]  # one merged expert per group
    router: torch.Tensor  # [len(groups), H]


def group_weights(frequency: torch.Tensor, group: Sequence[int]) -> torch.Tensor:
    """Each member's share of the group's activation frequency (MC-SMoE's and Sub-MoE's merge
    weights); uniform when the router chose none of them on the calibration text."""
    f = frequency[list(group)].double()
    return f / f.sum() if f.sum() > 0 else torch.full_like(f, 1.0 / len(group))


def weighted_sum(experts: Sequence[Expert], weights: torch.Tensor) -> Expert:
    """sum_i weights[i] * expert_i, matrix by matrix."""
    return Expert(
        *(
            sum(float(w) * getattr(ex, part).double() for ex, w in zip(experts, weights)).float()
            for part in Expert._fields
        )
    )


def representative_rows(router: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    return router[[g[0] for g in groups]].clone()
