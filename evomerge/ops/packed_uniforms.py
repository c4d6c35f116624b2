"""DARE's uniforms packed for a search worker: 3 bytes per entry kept, 1 byte read per candidate.

A search worker keeps each tensor's seeded uniforms u (ResidentCache), and every DARE candidate
tests u < p for each entry and model. As float32 that read was the largest part of a DARE
candidate (4 bytes per entry and model, once in the merge and once more for the L1 rescale's
boundary bucket), and made it cost ~3× one pass over the experts' bytes.

torch.rand's float32 uniform is exactly k / 2^24 for a 24-bit integer k (mt_uniform.py), so
u < p <=> k < K with K = ceil(p · 2^24), exact for any float32 p. The worker stores k's high
byte h and its low 16 bits l. An entry is kept when h < K >> 16; entries with h = K >> 16 (about
1/256 of them) compare l with K & 0xFFFF as well. The C kernel (``gta_fused_packed``) decides by h
alone in its vectorized loop, then recomputes those few boundary entries exactly. The bits are
the float32 rule's (tests/test_packed_uniforms.py). h is also the bucket (⌊256 u⌋) of
dare_l1's L1 table, so the rescale reads h instead of u too.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import numpy as np
import torch

_SCALE = 1 << 24


@dataclass(frozen=True)
class PackedUniforms:
    high: torch.Tensor  # uint8, flat: k >> 16, which is also ⌊256 u⌋
    low: torch.Tensor  # int16, flat: the bits of k & 0xFFFF (read as uint16)

    @property
    def nbytes(self) -> int:
        return self.high.nbytes + self.low.nbytes

    def unpack(self) -> torch.Tensor:
        """The float32 uniforms again (flat)."""
        k = self.high.to(torch.int32).bitwise_left_shift_(16)
        k.bitwise_or_(self.low.to(torch.int32).bitwise_and_(0xFFFF))
        return k.to(torch.float32).mul_(1.0 / _SCALE)


def pack(u: torch.Tensor) -> PackedUniforms:
    """Pack torch.rand's float32 uniforms (any shape; flattened)."""
    flat = u.reshape(-1)
    k = flat.mul(_SCALE).to(torch.int32)
    if not torch.equal(k.to(torch.float32).mul_(1.0 / _SCALE), flat):
        raise ValueError("uniforms are not torch.rand's 24-bit float32 values: cannot pack them")
    return PackedUniforms(k.bitwise_right_shift(16).to(torch.uint8), k.to(torch.int16))


def limit(p: float) -> tuple[int, int]:
    """(K >> 16, K & 0xFFFF) with K = ceil(p · 2^24) clamped to [0, 2^24], for the float32 keep
    rate p: u < p <=> k < K (p · 2^24 is exact in float64)."""
    k = min(max(math.ceil(float(np.float32(p)) * _SCALE), 0), _SCALE)
    return k >> 16, k & 0xFFFF


def merge(
    base: torch.Tensor,
    sources: list[torch.Tensor],
    draws: list[PackedUniforms],
    keep_rates: list[float],
    *,
    scales: list[float],
    weights: list[float],
    consensus: str | None,
    normalize: bool,
    scalar_divisor: float,
    lam: float,
    out: torch.Tensor,
) -> torch.Tensor:
    """``fused_gta.run`` for DARE with packed draws (flat float32 CPU tensors): the same bits."""
    from evomerge.ops import fused_gta

    lib = fused_gta.library()
    assert lib is not None and fused_gta.usable(base, sources, out)
    m = len(sources)
    limits = [limit(p) for p in keep_rates]
    arrays = (
        (ctypes.c_void_p * m)(*[t.data_ptr() for t in sources]),
        (ctypes.c_void_p * m)(*[d.high.data_ptr() for d in draws]),
        (ctypes.c_void_p * m)(*[d.low.data_ptr() for d in draws]),
        (ctypes.c_int32 * m)(*[b for b, _ in limits]),
        (ctypes.c_int32 * m)(*[k for _, k in limits]),
        (ctypes.c_float * m)(*scales),
        (ctypes.c_float * m)(*weights),
    )
    args = (m, base.data_ptr(), *[ctypes.addressof(a) for a in arrays])
    args += (fused_gta.CONSENSUS[consensus], int(normalize), scalar_divisor, lam, out.data_ptr())
    chunks = fused_gta.split_chunks(base.numel())
    fused_gta.parallel(lambda c, _: lib.gta_fused_packed(c[0], c[1], *args), chunks, chunks)
    return out


def edge_l1_bins(
    src: torch.Tensor, base: torch.Tensor, draws: PackedUniforms, p: float
) -> np.ndarray:
    """``fused_gta.l1_bins(src, base, u, p)`` restricted to the boundary byte h = K >> 16 (the
    part of DARE's kept L1 that dare_l1's table does not hold)."""
    from evomerge.ops import fused_gta

    lib = fused_gta.library()
    assert lib is not None
    kb, kl = limit(p)
    chunks = fused_gta.split_chunks(src.numel())
    bins = [np.zeros(256, dtype=np.int64) for _ in chunks]
    ptrs = (base.data_ptr(), src.data_ptr(), draws.high.data_ptr(), draws.low.data_ptr(), kb, kl)

    def fill(c: tuple[int, int], b: np.ndarray) -> None:
        lib.abs_l1_bins_edge(c[0], c[1], *ptrs, b.ctypes.data)

    fused_gta.parallel(fill, chunks, bins)
    return bins[0] if len(bins) == 1 else np.sum(bins, axis=0)
