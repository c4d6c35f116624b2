"""exact_l1: Σ|x| of a float32 tensor, exact and rounded once — checked against exact rational
arithmetic, identical from torch (bincount) and from the C kernel, independent of the order of
the entries (so of threads and chunking), and the DARE table's lookups equal the direct sums."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from evomerge.merge.ops import exact_l1
from evomerge.merge.ops._fast import dare_l1, fused_gta, l1
from evomerge.merge.ops._fast.packed_uniform import Packed


def _exact_f32(x: torch.Tensor) -> float:
    """Σ|x| in rationals, rounded to the nearest float32 (ties to even) by brute force."""
    s = sum(Fraction(v) for v in x.abs().double().tolist())
    f = np.float32(float(s))
    cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - s), int(c.view(np.int32)) & 1))
    return float(best)


@pytest.mark.parametrize("seed", range(6))
def test_exact_and_order_independent(seed):
    g = torch.Generator().manual_seed(seed)
    n = 5000 + 997 * seed
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * 6)
    x[::7] = 0.0
    x[::11] = 3e-42  # subnormals
    want = _exact_f32(x)
    assert float(exact_l1.l1_norm(x)) == want
    assert exact_l1.l1_from_bins(exact_l1.l1_bins_torch(x)) == want
    shuffled = x[torch.randperm(n, generator=g)]
    assert float(exact_l1.l1_norm(shuffled)) == want
    if fused_gta.library() is not None:
        assert list(fused_gta.l1_bins(x, None)) == exact_l1.l1_bins_torch(x)
        assert float(l1.l1_norm(x)) == want and float(l1.l1_norm(shuffled)) == want


@pytest.mark.skipif(fused_gta.library() is None, reason="no C compiler here")
def test_rounding_in_c_equals_python_integers():
    """l1_from_bins rounds in C (128-bit sums) when the exponents span ≤ 64, else in Python:
    the same float32 for narrow and wide spans, subnormal totals, a carry out of 24 bits,
    exact halves (ties to even) and overflow."""
    rng = np.random.default_rng(0)
    cases = []
    for span in (1, 5, 30, 64, 65, 66, 200):
        for _ in range(40):
            b = np.zeros(256, dtype=np.int64)
            lo = int(rng.integers(0, 255 - min(span, 254)))
            used = rng.choice(np.arange(lo, min(lo + span + 1, 255)), size=min(8, span + 1))
            b[used] = rng.integers(0, 1 << 55, size=used.size, dtype=np.int64)
            b[lo], b[min(lo + span, 254)] = 1 + b[lo], 1 + b[min(lo + span, 254)]
            cases.append(b)
    tie = np.zeros(256, dtype=np.int64)
    tie[100], tie[76] = (1 << 24) - 1, 1 << 23  # ...1.1 (binary) after the 24th bit: to even
    below = tie.copy()
    below[50] = 1  # just above the half: rounds up
    carry = np.zeros(256, dtype=np.int64)
    carry[120] = (1 << 25) - 1  # all ones: the rounding carries into a 25th bit
    tiny = np.zeros(256, dtype=np.int64)
    tiny[0], tiny[1], tiny[2] = 3, 5, 7  # subnormal total
    huge = np.zeros(256, dtype=np.int64)
    huge[254] = 1 << 40  # beyond float32's range: inf
    big = np.zeros(256, dtype=np.int64)
    big[[60, 124]] = (1 << 62) + 12345, (1 << 62) - 1  # bins ≥ 2^56: Python's integers
    cases += [tie, below, carry, tiny, huge, big, np.zeros(256, dtype=np.int64)]
    for b in cases:
        assert l1.l1_from_bins(b) == exact_l1.l1_from_bins(b), np.flatnonzero(b)
    assert l1.l1_from_bins(huge) == float("inf")


@pytest.mark.skipif(fused_gta.library() is None, reason="no C compiler here")
def test_dare_table_in_c_equals_torch_bincount():
    """The bucketed table's (bucket, exponent) mantissa sums in C are torch's exact bincount
    of the same entries — τ = 0 entries, subnormals, exponents far apart, a ragged length split
    over two threads."""
    g = torch.Generator().manual_seed(9)
    n = (1 << 18) + 77
    b = torch.randn(n, generator=g)
    t = b + 0.01 * torch.randn(n, generator=g)
    t[::5] = b[::5]
    b[1::101], t[1::101] = 0.0, 1e-40  # subnormal |τ|
    t[2::211] = b[2::211] + 3e4  # exponents far apart
    u = Packed.of(torch.rand(n, generator=g))
    e, mant = exact_l1.exponent_mantissa((t - b).abs().view(torch.int32))
    key = (u.high.to(torch.int64) >> 8) * 256 + e
    want = torch.bincount(key, mant.double(), 256 * 256).reshape(256, 256).to(torch.int64)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert len(fused_gta._chunks(n)) == 2
        assert np.array_equal(fused_gta.bucket_sums(t, b, u), want.numpy())
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(fused_gta.library() is None, reason="no C compiler here")
def test_dare_table_lookup_equals_direct_sum():
    g = torch.Generator().manual_seed(3)
    n = 1 << 16
    b = torch.randn(n, generator=g)
    t = b + 0.01 * torch.randn(n, generator=g)
    t[::5] = b[::5]  # untouched entries: τ = 0
    u = Packed.of(torch.rand(n, generator=g))
    table = dare_l1.build(t, b, u)
    for p in (0.0, 1e-6, 0.1, 0.5, 0.5 + 2**-10, 0.77, 255 / 256, 0.9999, 1.0):
        p32 = float(np.float32(p))
        direct = l1.l1_from_bins(fused_gta.l1_bins(t, b, u, p32))
        assert dare_l1.kept_l1(table, t, b, u, p32) == direct, p


@pytest.mark.skipif(fused_gta.library() is None, reason="no C compiler here")
@pytest.mark.parametrize("wide", [False, True])
def test_kept_l1_from_kept_bucket_members_equals_direct_sum(wide):
    """A search worker keeps each visited bucket's members (their u and |τ|): a keep rate in a
    bucket met before reads only them. Same sums as the direct pass, whether the members are
    found now or served; a rate on a bucket edge needs none. ``wide``: |τ| spans more than 64
    binary exponents, where the C rounding hands over to Python's integers."""
    g = torch.Generator().manual_seed(4)
    n = (1 << 17) + 29
    b = torch.randn(n, generator=g)
    t = b + 0.01 * torch.randn(n, generator=g)
    t[::3] = b[::3]
    if wide:
        b[1::97], t[1::97] = 0.0, 1e-30
    uf = torch.rand(n, generator=g)
    u = Packed.of(uf)
    table = dare_l1.build(t, b, u)
    kept: dict[int, fused_gta.Listed] = {}
    made = []

    def cached(q, make):
        if q not in kept:
            made.append(q)
            kept[q] = make()
        return kept[q]

    rates = (0.3, 0.3 + 2**-12, 0.301, 0.5, 0.73, 0.3 + 2**-10, 1e-7, 0.99999)
    for p in rates + rates:  # found, then served
        p32 = float(np.float32(p))
        direct = l1.l1_from_bins(fused_gta.l1_bins(t, b, u, p32))
        assert dare_l1.kept_l1(table, t, b, u, p32, cached) == direct, p
    assert sorted(made) == sorted({int(np.float32(p) * 256) for p in rates if p != 0.5})
    q = int(0.3 * 256)
    inside = ((uf >= q / 256) & (uf < (q + 1) / 256)).nonzero().reshape(-1)
    pairs = kept[q].pairs
    assert np.array_equal(pairs[0], (uf[inside].double() * 2**24).numpy().astype(np.uint32))
    assert np.array_equal(pairs[1], (t - b)[inside].abs().view(torch.int32).numpy())


@pytest.mark.skipif(fused_gta.library() is None, reason="no C compiler here")
def test_bucket_members_with_many_hits_are_the_masked_entries():
    """Finding a bucket's members gathers its hits in batches: a bucket full enough to fill
    many batches, and a length that is not a multiple of its 64-entry groups, give exactly the
    entries inside it (their k and |t − b|, index order), whose sums are the masked exact sum."""
    g = torch.Generator().manual_seed(5)
    n = (1 << 18) + 13
    b = torch.randn(n, generator=g)
    t = b + 0.01 * torch.randn(n, generator=g)
    uf = torch.rand(n, generator=g)
    uf[::3] = 0.25 + 2**-12  # a third of the entries in bucket 64: many batches
    u = Packed.of(uf)
    for q in (64, 0, 255, 100):
        keep = (uf >= q / 256) & (uf < (q + 1) / 256)
        listed = fused_gta.bucket_members(t, b, u, q)
        inside = keep.nonzero().reshape(-1)
        assert np.array_equal(listed.pairs[0], u.keys()[inside].numpy().astype(np.uint32))
        assert np.array_equal(listed.pairs[1], (t - b)[inside].abs().view(torch.int32).numpy())
        for p in ((q + 1) / 256, (q + 0.5) / 256):
            want = exact_l1.l1_bins_torch(((t - b) * (keep & (uf < p))).abs())
            assert list(fused_gta.l1_bins_listed(listed, p)) == want, (q, p)
