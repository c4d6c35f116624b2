"""torch.rand's float32 uniforms, drawn in C from the torch generator's own state.

Why: DARE (and DELLA) draw one uniform per parameter and model from the recipe's seeded
``torch.Generator``; torch's CPU draw runs element by element at ~9–11 ns per value here, which
made the draws most of a DARE merge (12.7 s of 22.6 s at 0.5B parameters × 3 experts). The
generator is the standard 32-bit Mersenne twister (Matsumoto & Nishimura 1998) and torch.rand
keeps the low 24 bits of each output times 2^-24, so ``mt_uniform24`` in ``_fused_gta.c`` gives
the same values; the state is read with ``Generator.get_state`` and written back with
``set_state``, so later draws continue the stream exactly where torch.rand would have left it.

``draw`` returns None (the caller uses torch.rand) without the C kernel, for a non-CPU
generator, or when the state does not have the layout below (another torch version's), so the
bits never depend on which path ran; tests/test_mt_uniform.py checks it against torch.rand.
``uniform`` and ``uniform_packed`` are the draws the fast path uses: these, or torch.rand's.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import torch

from evomerge.errors import UserInputError
from evomerge.merge.ops import sparsify
from evomerge.merge.ops._fast import fused_gta
from evomerge.merge.ops._fast.packed_uniform import Packed

# at::CPUGeneratorImplState as get_state returns it (x86-64 and aarch64 layouts agree):
# int64 seed @0, int32 left @8, int32 seeded @12, uint64 next @16, uint64 state[624] @24, then
# the cached normal samples (untouched here)
_STATE_BYTES = 5056
_N = 624
_LEFT, _SEEDED, _NEXT, _WORDS = 8, 12, 16, 24


def draw(
    shape: tuple[int, ...], generator: torch.Generator, packed: bool = False
) -> torch.Tensor | Packed | None:
    """``torch.rand(shape, generator=generator)`` (float32), or with ``packed`` the same values
    as a flat ``Packed`` (what DARE's fused kernel reads); None when this path can't."""
    lib = fused_gta.library()
    if lib is None or generator.device.type != "cpu":
        return None
    state = generator.get_state()
    raw = state.numpy()
    if raw.size != _STATE_BYTES:
        return None
    left = raw[_LEFT : _LEFT + 4].view(np.int32)
    nxt = raw[_NEXT : _NEXT + 8].view(np.uint64)
    words = raw[_WORDS : _WORDS + 8 * _N].view(np.uint64)
    seeded = int(raw[_SEEDED : _SEEDED + 4].view(np.int32)[0])
    l0, k0 = int(left[0]), int(nxt[0])
    if seeded != 1 or not 1 <= l0 <= _N or (l0 > 1 and k0 + l0 - 1 != _N):
        return None  # not the bookkeeping mt_uniform24 reproduces (left 1: regenerate next)
    s = np.ascontiguousarray(words, dtype=np.uint32)
    n = math.prod(shape)
    out = Packed.empty(n) if packed else torch.empty(shape, dtype=torch.float32)
    where = (
        (None, out.high.data_ptr(), out.low.data_ptr()) if packed else (out.data_ptr(), None, None)
    )
    l_, k_ = ctypes.c_int32(l0), ctypes.c_uint32(k0)
    lib.mt_uniform24(ctypes.byref(l_), ctypes.byref(k_), s.ctypes.data, n, *where)
    left[0], nxt[0] = l_.value, k_.value
    words[:] = s
    generator.set_state(state)
    return out


def uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """``sparsify.uniform``'s values (torch.rand from the recipe's generator): in C when the
    kernel is there (~8× faster)."""
    fast = draw(shape, _needed(generator))
    return fast if fast is not None else sparsify.uniform(shape, generator)


def uniform_packed(shape: tuple[int, ...], generator: torch.Generator | None) -> Packed:
    """``uniform``'s values, flat and packed (``packed_uniform``: what DARE's fused kernel
    reads), advancing the generator exactly as ``uniform`` does."""
    fast = draw(shape, _needed(generator), packed=True)
    return fast if fast is not None else Packed.of(uniform(shape, generator))


def _needed(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        raise UserInputError("a stochastic operator needs a generator (recipe seed)")
    return generator
