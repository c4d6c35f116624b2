"""DARE's uniforms as the fused kernel reads them: 3 bytes per entry instead of float32's 4.

torch.rand's float32 uniform is u = k · 2^-24 for a 24-bit integer k (``mt_uniform``). A
``Packed`` holds k's high 16 bits (``high``, uint16) and its low 8 bits (``low``, uint8) in two
arrays. DARE keeps an entry where u < p, which is k < K with K = ``below(p)``: exact, so the
masks are the float path's, bit for bit. The kernel decides on ``high`` alone (k < K when
high < K >> 8, k ≥ K when high > K >> 8) and reads ``low`` only for the ~1 entry in 65,536
whose high half equals K >> 8. So a candidate streams 2 bytes of uniforms per entry and model,
not 4, and a search worker's ResidentCache holds 3 (DARE's kernel is memory-bound: its seven
input streams were 28 of the 32 bytes it moved per entry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_SCALE = 1 << 24  # u = k / 2^24


@dataclass(frozen=True)
class Packed:
    high: torch.Tensor  # uint16, flat: k >> 8
    low: torch.Tensor  # uint8, flat: k & 255

    @property
    def nbytes(self) -> int:
        return self.high.nbytes + self.low.nbytes

    def numel(self) -> int:
        return self.high.numel()

    def keys(self) -> torch.Tensor:
        """k as int32 (for tests and the Python fallback)."""
        return (self.high.to(torch.int32) << 8) | self.low.to(torch.int32)

    def floats(self) -> torch.Tensor:
        """The float32 uniforms u = k · 2^-24 (exact)."""
        return self.keys().to(torch.float32) * (1.0 / _SCALE)

    @staticmethod
    def of(u: torch.Tensor) -> Packed:
        """Packs torch.rand's float32 uniforms (every value is k · 2^-24, k < 2^24)."""
        k = (u.reshape(-1).to(torch.float64) * _SCALE).to(torch.int32)
        return Packed((k >> 8).to(torch.uint16), (k & 255).to(torch.uint8))

    @staticmethod
    def empty(n: int) -> Packed:
        return Packed(torch.empty(n, dtype=torch.uint16), torch.empty(n, dtype=torch.uint8))

    @staticmethod
    def zeros(n: int) -> Packed:
        """u = 0 everywhere: every entry kept at any rate above 0 (a model at density ≥ 1)."""
        return Packed(torch.zeros(n, dtype=torch.uint16), torch.zeros(n, dtype=torch.uint8))


def below(p: float) -> int:
    """K such that u < p ⟺ k < K, for the float32 value ``p``: ceil(p · 2^24), clamped to
    [0, 2^24] (p · 2^24 is exact in double; u < NaN is never true)."""
    if p != p:
        return 0
    return min(max(math.ceil(float(p) * _SCALE), 0), _SCALE)
