"""DARE's uniforms drawn in C (evomerge/merge/ops/_fast/mt_uniform.py) are torch.rand's, value for value,
and leave the generator exactly where torch.rand would: across block boundaries of the
Mersenne twister (624 outputs), for fresh and part-used generators, and for later draws of any
kind (rand, randn) from the same generator."""

from __future__ import annotations

import pytest
import torch

from evomerge.merge.ops import generator_for, sparsify
from evomerge.merge.ops._fast import fused_gta, mt_uniform

pytestmark = pytest.mark.skipif(fused_gta.library() is None, reason="no C compiler here")


@pytest.mark.parametrize(
    "sizes",
    [[1], [3, 621, 1, 624, 625], [623], [624], [625], [1247, 1248, 1249], [0, 7], [1 << 20]],
)
def test_draws_are_torch_rand(sizes):
    ours, theirs = generator_for(3, "w"), generator_for(3, "w")
    for n in sizes:
        got = mt_uniform.draw((n,), ours)
        assert got is not None and torch.equal(got, torch.rand(n, generator=theirs)), n
    # the generator continues where torch.rand would have left it, for any later draw
    assert torch.equal(torch.rand(1000, generator=ours), torch.rand(1000, generator=theirs))
    assert torch.equal(torch.randn(7, generator=ours), torch.randn(7, generator=theirs))
    assert ours.initial_seed() == theirs.initial_seed()


@pytest.mark.parametrize("sizes", [[3, 621, 1, 625], [1 << 20, 5]])
def test_packed_draws_are_torch_rand(sizes):
    """Packed (DARE's fused kernel: k = u · 2^24 as 16 + 8 bits), the same values and the same
    stream; ``packed_uniform.below`` is the keep rule u < p on k, at and around the values."""
    from evomerge.merge.ops._fast import packed_uniform

    ours, theirs = generator_for(4, "w"), generator_for(4, "w")
    for n in sizes:
        got = mt_uniform.draw((n,), ours, packed=True)
        want = torch.rand(n, generator=theirs)
        assert got is not None and torch.equal(got.floats(), want), n
        assert torch.equal(
            mt_uniform.uniform_packed((n,), generator_for(4, "w")).floats()[:n],
            torch.rand(n, generator=generator_for(4, "w")),
        )
        k = got.keys()
        for p in (*want[:50].tolist(), 0.0, 1.0, 0.3, 2**-30, float("nan"), -0.5, 1.5):
            p32 = torch.tensor(p, dtype=torch.float32)
            assert torch.equal(k < packed_uniform.below(float(p32)), want < p32), p
    assert torch.equal(torch.rand(9, generator=ours), torch.rand(9, generator=theirs))


def test_shape_and_the_fast_uniform_use_it(monkeypatch):
    """The fast path's ``uniform`` draws in C, the operator's ``sparsify.uniform`` with
    torch.rand: the same values and the same stream."""
    g1, g2 = generator_for(9, "x"), generator_for(9, "x")
    got = mt_uniform.uniform((33, 70), g1)
    assert got.shape == (33, 70) and got.dtype == torch.float32
    assert torch.equal(got, sparsify.uniform((33, 70), g2))
    calls = []
    real = mt_uniform.draw
    monkeypatch.setattr(mt_uniform, "draw", lambda *a: calls.append(1) or real(*a))
    mt_uniform.uniform((5,), g1)
    assert calls == [1]


def test_unknown_state_falls_back_to_torch(monkeypatch):
    """A state the C path does not reproduce (here: a torch whose state has another size) is
    left to torch.rand: the same values either way."""
    monkeypatch.setattr(mt_uniform, "_STATE_BYTES", 1)
    g1, g2 = generator_for(1, "y"), generator_for(1, "y")
    assert mt_uniform.draw((10,), g1) is None
    assert torch.equal(mt_uniform.uniform((10,), g1), torch.rand(10, generator=g2))
