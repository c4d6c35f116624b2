"""JAX's default random numbers (Threefry-2x32, the non-partitionable layout of jax ≤ 0.4.x) in
NumPy, so that ``m2n2_digits.py`` can start from the exact expert initialisations of the M2N2
reference code (SakanaAI/natural_niches, "Competition and Attraction Improve Model Fusion",
Abrantes et al. 2025: ``jax.random.PRNGKey(42)`` split in two, ``normal × 0.01``) without JAX.

Threefry-2x32 with 20 rounds is the Random123 cipher (Salmon et al. 2011); the counter layout
(first half of the counters in one word, second half in the other) and the float conversion
(23 mantissa bits → [1, 2) − 1, then √2·erfinv on (−1, 1)) follow what jax 0.4.31 computes.
Checked against JAX's documented values: split(PRNGKey(0)) and normal(PRNGKey(0), (10,)).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erfinv

_M32 = np.uint64(0xFFFFFFFF)
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x: np.ndarray, d: int) -> np.ndarray:
    return ((x << np.uint64(d)) | (x >> np.uint64(32 - d))) & _M32


def threefry2x32(key: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Encrypt ``counts`` (uint32) under ``key`` (two uint32) as JAX's ``threefry_2x32`` does."""
    k0, k1 = (np.uint64(k) for k in key)
    ks = (k0, k1, k0 ^ k1 ^ np.uint64(0x1BD11BDA))
    c = np.asarray(counts, dtype=np.uint64).ravel()
    odd = c.size % 2
    if odd:  # JAX pads an odd count with one zero and drops its output
        c = np.concatenate([c, np.zeros(1, np.uint64)])
    x0 = (c[: c.size // 2] + ks[0]) & _M32
    x1 = (c[c.size // 2 :] + ks[1]) & _M32
    for i in range(5):
        for d in _ROTATIONS[i % 2]:
            x0 = (x0 + x1) & _M32
            x1 = _rotl(x1, d) ^ x0
        x0 = (x0 + ks[(i + 1) % 3]) & _M32
        x1 = (x1 + ks[(i + 2) % 3] + np.uint64(i + 1)) & _M32
    out = np.concatenate([x0, x1])
    return (out[:-1] if odd else out).astype(np.uint32)


def prng_key(seed: int) -> np.ndarray:
    """``jax.random.PRNGKey(seed)`` for 0 ≤ seed < 2**32: (high word, low word)."""
    return np.array([0, seed], np.uint32)


def split(key: np.ndarray, num: int = 2) -> np.ndarray:
    return threefry2x32(key, np.arange(num * 2)).reshape(num, 2)


def normal(key: np.ndarray, n: int) -> np.ndarray:
    """``jax.random.normal(key, (n,))`` in float32 (erfinv in float64: at most 1 ulp apart)."""
    bits = threefry2x32(key, np.arange(n))
    one = np.array(1.0, np.float32).view(np.uint32)
    u01 = ((bits >> np.uint32(9)) | one).view(np.float32) - np.float32(1.0)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = np.maximum(lo, u01 * (np.float32(1.0) - lo) + lo).astype(np.float32)
    return np.float32(np.sqrt(2.0)) * erfinv(u.astype(np.float64)).astype(np.float32)
