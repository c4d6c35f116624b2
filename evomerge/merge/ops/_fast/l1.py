"""The exact L1 norm (``evomerge.merge.ops.exact_l1``) through the C kernel: the same 256
per-exponent mantissa sums (``fused_gta.l1_bins``) and the same single rounding
(``l1_round``), where the tensors allow it; exact_l1's torch and Python code otherwise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from evomerge.merge.ops import exact_l1
from evomerge.merge.ops._fast import fused_gta


def l1_norm(tensor: torch.Tensor) -> torch.Tensor:
    """``exact_l1.l1_norm(tensor)``: one read in C for a float32 CPU tensor."""
    flat = tensor.reshape(-1)
    if tensor.dtype != torch.float32 or not fused_gta.usable(flat, [flat], None):
        return exact_l1.l1_norm(tensor)
    value = l1_from_bins(fused_gta.l1_bins(flat, None))
    return torch.tensor(value, dtype=torch.float32, device=tensor.device)


def l1_from_bins(bins: Sequence[int]) -> float:
    """``exact_l1.l1_from_bins(bins)``: rounded in C for an int64 array whose exponents the C
    rounding spans (it answers NaN otherwise)."""
    if isinstance(bins, np.ndarray) and bins.dtype == np.int64 and bins.flags.c_contiguous:
        lib = fused_gta.library()
        value = math.nan if lib is None else lib.l1_round(bins.ctypes.data)
        if value == value:
            return value
    return exact_l1.l1_from_bins(bins)
