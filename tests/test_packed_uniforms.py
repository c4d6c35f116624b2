"""A search worker keeps DARE's uniforms packed (high byte + low 16 bits of the 24-bit integer
behind each torch.rand float32) and the C kernel keeps an entry where k < ceil(p · 2^24): the
same keep rule as u < p for every float32 p, hence the same bits as the eager merge, candidate
after candidate, including keep rates on a bucket edge and tensors split over threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.ops import dare_l1, exact_l1, fused_gta, packed_uniforms
from evomerge.ops.packed_uniforms import limit, pack
from evomerge.workers.resident_cache import ResidentCache
from tests.test_resident_cache import _family, _run, _same_bits, _task

pytestmark = pytest.mark.skipif(fused_gta.library() is None, reason="no C compiler here")

# keep rates on and next to bucket edges (c/256), with p · 2^24 an integer or not, tiny and ~1
EDGES = [0.5, 3 / 256, 3 / 256 + 2**-24, 3 / 256 - 2**-24, 0.3, 1e-7, 1 - 2**-24, 0.999]


def _rule(u: torch.Tensor, p: float) -> torch.Tensor:
    packed = pack(u)
    kb, kl = limit(p)
    h = packed.high.to(torch.int32)
    lo = packed.low.to(torch.int32) & 0xFFFF
    return (h < kb) | ((h == kb) & (lo < kl))


def test_pack_and_the_keep_rule_are_u_below_p():
    u = torch.rand(1 << 18, generator=torch.Generator().manual_seed(0))
    u[:4] = torch.tensor([0.0, 3 / 256, 0.5, 1 - 2**-24])  # values sitting on the edges
    assert torch.equal(pack(u).unpack(), u)
    for p in EDGES + [float(x) for x in u[:50]]:
        p32 = float(np.float32(p))
        assert torch.equal(_rule(u, p32), u < torch.tensor(p32)), p32


def test_pack_refuses_values_that_are_not_24_bit():
    with pytest.raises(ValueError, match="24-bit"):
        pack(torch.tensor([0.1]))  # 0.1 has mantissa bits below 2^-24


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear"])
def test_packed_merge_equals_eager_bits(monkeypatch, name):
    """Candidates with the DARE tables (≥ 2^14 entries), over 2 threads, served and computed."""
    calls = []
    real = packed_uniforms.merge
    monkeypatch.setattr(packed_uniforms, "merge", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        base, tensors = _family((300, 701), seed=5)
        cache = ResidentCache()
        for density in [0.5, 3 / 256, 3 / 256 + 2**-20, [0.9, 1.0, 0.3], 0.02, 0.999]:
            want = _run(name, tensors, base, density, 4)
            for _ in range(2):
                got = _run(name, tensors, base, density, 4, cache.for_task(_task(base), 4))
                assert _same_bits(got, want), (name, density)
    finally:
        torch.set_num_threads(before)
    assert calls and any(k[0] == "packed" for k in cache._entries)
    assert any(k[0] == "dare_l1" for k in cache._entries)


def test_kept_l1_from_packed_table_is_the_direct_sum():
    base, (src,) = _family((1 << 16,), n=1, seed=2)
    u = torch.rand(base.numel(), generator=torch.Generator().manual_seed(9))
    packed = pack(u)
    table = dare_l1.build((src - base).abs_().view(torch.int32), packed)
    for p in EDGES:
        p32 = float(np.float32(p))
        want = exact_l1.l1_from_bins(fused_gta.l1_bins(src, base, u, p32))
        assert dare_l1.kept_l1_packed(table, src, base, packed, p32) == want, p32
