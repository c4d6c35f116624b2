"""benchmarks/jax_threefry.py against JAX's own documented outputs (jax.random docs and
quickstart, jax ≤ 0.4): the M2N2 digits benchmark relies on it for the reference's expert inits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import jax_threefry as jt  # noqa: E402


def test_split_matches_jax():
    np.testing.assert_array_equal(
        jt.split(jt.prng_key(0)), [[4146024105, 967050713], [2718843009, 1272950319]]
    )


def test_normal_matches_jax():
    want = [-0.3721109, 0.26423115, -0.18252768, -0.7368197, -0.44030377]
    want += [-0.1521442, -0.67135346, -0.5908641, 0.73168886, 0.5673026]
    np.testing.assert_allclose(jt.normal(jt.prng_key(0), 10), want, rtol=0, atol=3e-7)
