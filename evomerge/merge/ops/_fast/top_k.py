"""TIES' top-k rule of one model's τ = t − b (``sparsify.magnitude``'s kept set) found faster:
by radix selection in C (``fused_gta.top_k_rule``), or on a search worker from its cached
ascending |τ| (``top_k_sorted``: two binary searches) with mergekit's tie order sorted once per
expert; elsewhere the ties mergekit's argsort keeps come from ``kept_ties`` (no sort). The rule
is ``sparsify.top_k``'s, so the kept entries are (tests/test_fused_gta.py,
tests/test_resident_cache.py, tests/test_kept_ties.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from evomerge.merge.ops import sparsify
from evomerge.merge.ops._fast import fused_gta
from evomerge.merge.ops._fast.kept_ties import Request, kept_ties_all

Lazy = Callable[[], torch.Tensor]  # computed only if needed


def top_k_rule(
    t: torch.Tensor, b: torch.Tensor, density: float, i: int, resident: Any, fused: bool = False
) -> sparsify.TopK | None:
    """``sparsify.magnitude``'s kept set of τ = t − b (flat) as a rule (None: keep everything).
    ``resident``: the worker's cached view of the tensor (or None); ``fused``: the caller
    checked ``fused_gta.usable`` for t and b."""
    n = b.numel()
    k = keep_count(density, n)
    if k in (0, n):
        return _all_or_none(k, b)
    if resident is None:
        if fused_gta.usable(b, [t], None):
            return top_k_rules([t], b, [density])[0]
        return sparsify.top_k((t - b).abs_(), k)
    srt = resident.sorted_abs(i, lambda: sorted_abs(t - b))
    locate = None
    if fused:  # ties at the threshold: found in one C read of t and b
        locate = lambda v, count, nth: fused_gta.nth_equal(t, b, v, count, nth)  # noqa: E731
    mag = lambda: (t - b).abs_()  # noqa: E731
    order = None
    if hasattr(resident, "descending_order"):  # mergekit's tie order, sorted once per expert
        order = lambda: resident.descending_order(i, lambda: _order32(mag()))  # noqa: E731
    return top_k_sorted(srt, k, mag, locate, order)


def top_k_rules(
    ts: list[torch.Tensor],
    b: torch.Tensor,
    densities: list[float],
    resident: Any = None,
    fused: bool = False,
) -> list[sparsify.TopK | None]:
    """``top_k_rule`` of each model's τ = t − b (flat). Off a search worker, by radix selection
    in C (the same rule, ~5× faster than the eager selection), and the models whose ties
    straddle the threshold find their kept ties at once (``kept_ties_all``)."""
    if resident is not None or not fused_gta.usable(b, ts, None, most=None):
        return [
            top_k_rule(t, b, d, i, resident, fused) for i, (t, d) in enumerate(zip(ts, densities))
        ]
    n = b.numel()
    rules: list[sparsify.TopK | None] = []
    straddle = []
    for i, (t, d) in enumerate(zip(ts, densities)):
        k = keep_count(d, n)
        if k in (0, n):
            rules.append(_all_or_none(k, b))
            continue
        v, split = fused_gta.top_k_rule(t, b, k)
        rules.append(sparsify.TopK(b.new_tensor(v), split, v))
        if split < n and v != 0:  # ties straddle v > 0: mergekit's argsort order picks them
            straddle.append((i, k, v))
    found = argsort_rules([(ts[i], b, k, v) for i, k, v in straddle])
    for (i, _, _), rule in zip(straddle, found):
        rules[i] = rule
    return rules


def keep_count(density: float, n: int) -> int:
    """How many entries ``sparsify.magnitude`` keeps of n: 0, n, or k in between."""
    if density >= 1:
        return n
    if density <= 0:
        return 0
    return min(n, max(1, int(density * n)))


def _all_or_none(k: int, like: torch.Tensor) -> sparsify.TopK | None:
    return None if k else sparsify.TopK(like.new_tensor(float("inf")), 0)  # (inf: keeps none)


def top_k_of(mag: torch.Tensor, k: int) -> sparsify.TopK:
    """``sparsify.top_k``'s rule for the flat magnitudes ``mag`` (0 < k < n), by radix
    selection and ``kept_ties`` in C where the kernel serves ``mag``: the sparsifiers' top-k aid
    (Breadcrumbs' two cuts, TIES with rescale or more than 4 models)."""
    if not fused_gta.usable(mag, [mag], None):
        return sparsify.top_k(mag, k)
    v, split = fused_gta.top_k_rule(mag, None, k)
    if split >= mag.numel() or v == 0:  # (zeros at v: the lowest indices, as top_k keeps them)
        return sparsify.TopK(mag.new_tensor(v), split, v)
    return argsort_rule(mag, None, k, v)


def argsort_rule(t: torch.Tensor, b: torch.Tensor | None, k: int, v: float) -> sparsify.TopK:
    """``sparsify.argsort_ties``' rule for the flat |t − b| (|t| without b) whose k-th largest
    v > 0 has ties straddling k."""
    return argsort_rules([(t, b, k, v)])[0]


def argsort_rules(requests: list[Request]) -> list[sparsify.TopK]:
    """``argsort_rule`` of each request: from ``kept_ties_all``, or the argsort where it
    declines."""
    found = kept_ties_all(requests) if requests else []
    if found is None:
        found = [None] * len(requests)
    rules = []
    for (t, b, k, v), ties in zip(requests, found):
        if ties is None:
            mag = (t - b).abs_() if b is not None else t.abs()
            rules.append(sparsify.argsort_ties(mag, k, mag.new_tensor(v)))
        else:
            rules.append(sparsify.TopK(t.new_tensor(v), 0, v, ties))
    return rules


def _order32(mag: torch.Tensor) -> torch.Tensor:
    """``sparsify.descending_order`` kept as int32: half the cache's bytes (n < 2**31)."""
    return sparsify.descending_order(mag).to(torch.int32)


def sorted_abs(tensor: torch.Tensor) -> torch.Tensor:
    """The ascending flat |tensor|: with it, the top-k rule of any k is a lookup. On CPU
    numpy sorts (its SIMD sort: ~20× torch.sort on float32); sorted values are the same
    whichever algorithm sorts them (no NaN: inputs are checked finite)."""
    flat = tensor.abs().reshape(-1)
    if flat.device.type == "cpu" and flat.dtype == torch.float32:
        return torch.from_numpy(np.sort(flat.numpy()))
    return flat.sort().values


Locate = Callable[[float, int, int], int]  # (v, count equal to v, nth) -> flat index


def top_k_sorted(
    sorted_mag: torch.Tensor,
    k: int,
    mag: Lazy,
    locate: Locate | None = None,
    order: Lazy | None = None,
) -> sparsify.TopK:
    """``top_k``'s rule from the ascending magnitudes (two binary searches instead of a
    selection); ``mag`` (the flat magnitudes) is read only when ties straddle the threshold:
    ``argsort_ties`` (``order``: its cached argsort), or at v = 0 the last kept zero
    (``locate``, when given, finds it instead)."""
    n = sorted_mag.numel()
    v = sorted_mag[n - k]
    value = None
    if sorted_mag.device.type == "cpu":  # numpy's binary search on the same memory: ~5× less
        a = sorted_mag.numpy()  # per-call overhead, which adds up over a model's tensors
        x = a[n - k]
        lo, hi, value = int(a.searchsorted(x)), int(a.searchsorted(x, side="right")), float(x)
    else:
        hi = int(torch.searchsorted(sorted_mag, v, right=True))
        lo = int(torch.searchsorted(sorted_mag, v))
    need = k - (n - hi)  # entries equal to v that are kept
    if need >= hi - lo:
        return sparsify.TopK(v, n, value)
    if v > 0:
        if order is None and fused_gta.usable(m := mag(), [m], None):  # no cached argsort
            return argsort_rule(m, None, k, float(v) if value is None else value)
        return sparsify.argsort_ties(mag(), k, v, order)
    if locate is not None:
        return sparsify.TopK(v, locate(float(v), hi - lo, need) + 1, value)
    return sparsify.TopK(v, sparsify.nth_equal(mag(), v, need) + 1, value)
