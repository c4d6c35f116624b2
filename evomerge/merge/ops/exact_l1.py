"""Exact L1 norms for the L1 rescale of DARE / DELLA / Breadcrumbs (mergekit's ``rescale``).

Σ|x| of a float32 tensor computed exactly and rounded once: every |x| is a 24-bit mantissa
times 2^(exponent − 150), so the mantissas are summed per exponent in integers (256 sums, exact
in any order) and the total is rounded to float32 at the end. The rescale factor therefore does
not depend on the summation order — thread count, device, chunking, or the fast path's C kernel
(``evomerge.merge.ops._fast.l1`` computes the same 256 sums) — where torch's ``abs().sum()``
(mergekit's) moves in its last bits with all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def l1_norm(tensor: torch.Tensor) -> torch.Tensor:
    """Σ|tensor| as a 0-d tensor of its dtype. For float32 (the compute dtype) it is the exact
    sum rounded once: the rescale factor then does not depend on the summation order (threads,
    devices, the fused kernel). mergekit's ``abs().sum()`` differs from it in the last bits."""
    if tensor.dtype != torch.float32:
        return tensor.abs().sum()
    bins = l1_bins_torch(tensor.reshape(-1))
    return torch.tensor(l1_from_bins(bins), dtype=torch.float32, device=tensor.device)


def l1_bins_torch(flat: torch.Tensor) -> list[int]:
    """Per exponent e, the sum of the mantissas (with the implicit bit) of |x|: every |x| is
    mantissa × 2^(max(e, 1) − 150). A bin of 2^29 mantissas (< 2^24 each) stays below 2^53,
    so bincount's float64 sums are exact integers whatever its order."""
    e, mant = exponent_mantissa(flat.view(torch.int32) & 0x7FFFFFFF)
    bins = [0] * 256
    for s in range(0, e.numel(), 1 << 29):
        part = torch.bincount(e[s : s + (1 << 29)], mant[s : s + (1 << 29)].double(), 256)
        bins = [x + int(y) for x, y in zip(bins, part.tolist())]
    return bins


def exponent_mantissa(abs_bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(biased exponent e as int64, 24-bit mantissa with the implicit bit as int32) of
    non-negative float32 values given as their int32 bits: the value is
    mantissa × 2^(max(e, 1) − 150)."""
    e = (abs_bits >> 23).to(torch.int64)
    return e, (abs_bits & 0x7FFFFF) | ((e > 0).to(torch.int32) << 23)


_F32_MAX = 3.4028234663852886e38


def l1_from_bins(bins: Sequence[int]) -> float:
    """The exact Σ (Σ_e bins[e] · 2^(max(e, 1) − 150)), rounded once to float32 (to nearest,
    ties to even) and returned as the Python float of that float32. ``bins``: 256 integers
    (a list, or an int64 numpy array), summed with Python's integers (any exponent span)."""
    bins = np.asarray(bins, dtype=object if isinstance(bins, list) else np.int64)
    if bins[255]:
        return float("inf")  # an Inf/NaN entry (inputs are checked finite; an overflowed τ)
    vals = bins.tolist()  # Python ints: a search sums ~200 of these per candidate
    total = 0  # × 2^-149
    for e in np.flatnonzero(bins[:255]).tolist():
        total += vals[e] << (e - 1 if e else 0)
    shift = total.bit_length() - 24
    if shift > 0:  # keep 24 significant bits
        q, rem, half = total >> shift, total & ((1 << shift) - 1), 1 << (shift - 1)
        if rem > half or (rem == half and q & 1):
            q += 1
        total, exp = q, shift - 149
    else:
        exp = -149
    value = math.ldexp(total, exp)
    return value if value <= _F32_MAX else float("inf")
