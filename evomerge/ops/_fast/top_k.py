"""TIES' top-k rule of one model's τ = t − b (``sparsify.magnitude``'s kept set) found faster:
by radix selection in C (``fused_gta.top_k_rule``), or on a search worker from its cached
ascending |τ| (two binary searches) with mergekit's tie order sorted once per expert. The rule
is the same as ``sparsify.top_k``'s, so the kept entries are (tests/test_fused_gta.py)."""

from __future__ import annotations

from typing import Any

import torch

from evomerge.ops import sparsify
from evomerge.ops._fast import fused_gta


def top_k_rule(
    t: torch.Tensor, b: torch.Tensor, density: float, i: int, resident: Any, fused: bool = False
) -> sparsify.TopK | None:
    """``sparsify.magnitude``'s kept set of τ = t − b (flat) as a rule (None: keep everything).
    ``resident``: the worker's cached view of the tensor (or None); ``fused``: the caller
    checked ``fused_gta.usable`` for t and b."""
    n = b.numel()
    if density >= 1:
        return None
    if density <= 0:
        return sparsify.TopK(b.new_tensor(float("inf")), 0)  # keeps nothing
    k = max(1, int(density * n))
    if k >= n:
        return None
    if resident is None:
        if fused_gta.usable(b, [t], None):  # radix selection in C: the same rule, ~5× faster
            v, split = fused_gta.top_k_rule(t, b, k)
            if split >= n or v == 0:
                return sparsify.TopK(b.new_tensor(v), split, v)
            # ties straddle v > 0: mergekit's argsort order picks the kept ones
            return sparsify.argsort_ties((t - b).abs_(), k, b.new_tensor(v))
        return sparsify.top_k((t - b).abs_(), k)
    srt = resident.sorted_abs(i, lambda: sparsify.sorted_abs(t - b))
    locate = None
    if fused:  # ties at the threshold: found in one C read of t and b
        locate = lambda v, count, nth: fused_gta.nth_equal(t, b, v, count, nth)  # noqa: E731
    mag = lambda: (t - b).abs_()  # noqa: E731
    order = None
    if hasattr(resident, "descending_order"):  # mergekit's tie order, sorted once per expert
        order = lambda: resident.descending_order(i, lambda: _order32(mag()))  # noqa: E731
    return sparsify.top_k_sorted(srt, k, mag, locate, order)


def _order32(mag: torch.Tensor) -> torch.Tensor:
    """``sparsify.descending_order`` kept as int32: half the cache's bytes (n < 2**31)."""
    return sparsify.descending_order(mag).to(torch.int32)
