"""The fused C kernel (evomerge/merge/ops/_fast/_fused_gta.c) gives the plain operators' bits for every
operator it serves — weights of both signs, densities 0..1, ties at the top-k threshold, zero
task vectors, normalize, both consensus rules, λ ≠ 1, the resident (cached τ) path, tensors
split across threads — and is skipped where it does not apply."""

from __future__ import annotations

import pytest
import torch

from evomerge.merge.ops import OPS, generator_for
from evomerge.merge.ops._fast import fused_gta
from evomerge.merge.ops._fast.packed_uniform import Packed
from evomerge.merge.ops._fast.resident_cache import ResidentCache
from tests.helpers.fast_path import run_fast
from tests.test_resident_cache import _family, _same_bits, _task

pytestmark = pytest.mark.skipif(fused_gta.library() is None, reason="no C compiler here")


def _lowest_index_rule(mag: torch.Tensor, k: int) -> tuple[float, int]:
    """The C radix selection's (v, split) from a stable argsort: keep |x| >= v below split and
    |x| > v from it on, the ties at v kept lowest index first."""
    order = torch.sort(mag, descending=True, stable=True).indices[:k]
    v = mag[order[-1]]
    if int((mag >= v).sum()) == k:
        return float(v), mag.numel()
    return float(v), int(order[mag[order] == v].max()) + 1


def _spy(monkeypatch):
    calls = []
    real = fused_gta.run
    monkeypatch.setattr(fused_gta, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


CASES = [
    ("ties", {}),
    ("ties", {"normalize": False}),
    ("ties", {"lambda": 0.3}),
    ("ties", {"normalize": False, "lambda": 1.7}),
    ("task_arithmetic", {}),
    ("task_arithmetic", {"normalize": True, "lambda": 0.45}),
    ("dare_ties", {}),
    ("dare_ties", {"rescale": False, "lambda": 0.7}),
    ("dare_linear", {}),
    ("dare_linear", {"normalize": True}),
]


@pytest.mark.parametrize("name,extra", CASES)
@pytest.mark.parametrize("shape,quantized", [((40, 30), False), ((33, 17), True), ((97,), True)])
def test_fused_equals_eager_bits(monkeypatch, name, extra, shape, quantized):
    base, tensors = _family(shape, quantized=quantized)
    tensors[1] = base.clone()  # a model that did not move: zero τ, every vote ±0
    spec = OPS[name]
    calls = _spy(monkeypatch)
    weights = [[0.5, -0.3, 0.8], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.3, 0.3, -0.6]]
    for weight in weights:
        for density in (0.0, 0.1, 0.5, [0.9, 1.0, 0.3], 1.0):
            p = {**spec.defaults, **extra, "weight": weight}
            if "density" in spec.defaults:
                p["density"] = density
            g = (lambda: generator_for(3, "w")) if spec.stochastic else (lambda: None)
            got = run_fast(name, tensors, base, p, generator=g())
            want = spec.fn(tensors, base, generator=g(), **p)  # the plain operator
            assert _same_bits(got, want), (name, extra, weight, density)
    assert calls, "the fused kernel was never used"


def test_consensus_count_and_four_models(monkeypatch):
    """The count election (sign majority) and the 4-model limit, called directly."""
    from evomerge.merge.ops._fast import gta
    from evomerge.merge.ops.task_arithmetic import general_task_arithmetic

    base, tensors = _family((51, 13), n=4, quantized=True, seed=5)
    calls = _spy(monkeypatch)
    for normalize in (True, False):
        p = dict(weight=[0.7, -0.2, 0.4, 1.1], density=0.4, normalize=normalize)
        # ties' fast route with the count election (no preset has it)
        got = gta._merge(tensors, base, "magnitude", "count", p, None, None, lambda: None)
        kw = dict(sparsification="magnitude", consensus="count", generator=None)
        want = general_task_arithmetic(tensors, base, **kw, **p)
        assert _same_bits(got, want)
    assert len(calls) == 2


def test_resident_tau_path_and_threads(monkeypatch):
    """Cached τ (task arithmetic on a worker), a tensor large enough to be split over threads,
    and the ``out=`` buffer a resident model's parameter provides."""
    base, tensors = _family((700, 401), quantized=True, seed=3)
    spec = OPS["task_arithmetic"]
    p = {**spec.defaults, "weight": [0.5, -0.3, 0.8]}
    want = spec.fn(tensors, base, generator=None, **p)
    cache = ResidentCache()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(2):  # computed, then served
            out = torch.empty_like(base)
            view = cache.for_task(_task(base), 0)
            got = run_fast("task_arithmetic", tensors, base, p, resident=view, out=out)
            assert got.data_ptr() == out.data_ptr() and _same_bits(got, want)
        assert len(fused_gta._chunks(base.numel())) == 2
    finally:
        torch.set_num_threads(before)


def test_not_used_for_other_dtypes_or_five_models(monkeypatch):
    calls = _spy(monkeypatch)
    base, tensors = _family((20, 10), n=5)
    run_fast("ties", tensors, base, {**OPS["ties"].defaults, "weight": 0.3})
    half = [t.to(torch.bfloat16) for t in tensors[:3]]
    p = {**OPS["task_arithmetic"].defaults, "weight": 0.3}
    run_fast("task_arithmetic", half, base.to(torch.bfloat16), p)
    assert not calls


@pytest.mark.parametrize("quantized", [False, True])
def test_radix_top_k_equals_eager_selection(quantized):
    """The C radix selection gives ``sparsify.top_k``'s (v, split) — ties straddling the
    threshold (quantized values), zero task vectors, k at both ends, a task vector alone.
    (The lowest-index rule: where ties straddle a v > 0 the engine sees the split inside the
    tensor and keeps mergekit's argsort order instead, ``sparsify.argsort_ties``.)"""

    base, tensors = _family((300, 257), quantized=quantized, seed=11)
    tensors.append(base.clone())
    n = base.numel()
    for t in tensors:
        for k in (1, 2, 17, n // 3, n // 2, n - 2, n - 1):
            for b in (base, None):
                mag = (t - b).abs() if b is not None else t.abs()
                v, split = fused_gta.top_k_rule(
                    t.reshape(-1), None if b is None else b.reshape(-1), k
                )
                assert (v, split) == _lowest_index_rule(mag.reshape(-1), k), (k, quantized)


def test_radix_top_k_split_over_threads():

    base, (t, *_) = _family((700, 401), quantized=True, seed=2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert len(fused_gta._chunks(base.numel())) == 2
        for k in (5, base.numel() // 2):
            got = fused_gta.top_k_rule(t.reshape(-1), base.reshape(-1), k)
            assert got == _lowest_index_rule((t - base).abs().reshape(-1), k)
    finally:
        torch.set_num_threads(before)


def test_nth_equal_over_threads_is_the_eager_scan():
    """A search worker's top-k rule from the sorted |τ| finds the last kept entry equal to the
    threshold with one C read (``nth_equal``): the index the eager block scan finds."""
    from evomerge.merge.ops import sparsify

    base, (t, *_) = _family((700, 401), quantized=True, seed=4)
    mag = (t - base).abs().reshape(-1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for v in mag.unique()[[1, 7, 30]]:
            count = int((mag == v).sum())
            for nth in sorted({1, count // 2 + 1, count}):
                want = sparsify.nth_equal(mag, v, nth)
                got = fused_gta.nth_equal(t.reshape(-1), base.reshape(-1), float(v), count, nth)
                assert got == want, (float(v), nth)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n_models", [1, 2, 4, 5])
def test_linear_from_bf16_equals_float32_bits(n_models):
    """Linear on bf16 inputs as stored (the kernel widens them) gives the bits of linear on
    their float32 copies — a tail that is not a whole vector, and a size split over threads."""
    spec = OPS["linear"]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for shape in ((33, 17), (700, 401)):
            _, tensors = _family(shape, n=n_models, seed=n_models)
            half = [t.to(torch.bfloat16) for t in tensors]
            for normalize in (True, False):
                p = {"weight": [0.3, 0.7, -0.2, 1.3, 0.11][:n_models], "normalize": normalize}
                got = run_fast("linear", half, None, p)
                want = spec.fn([t.float() for t in half], None, **p)
                assert got.dtype == torch.float32 and _same_bits(got, want)
    finally:
        torch.set_num_threads(before)


def test_linear_bf16_output_is_torch_narrowing():
    """With out_dtype bfloat16 the kernel narrows in its own pass: the bits of the float32
    result narrowed by torch (round to nearest, ties to even), including exact ties."""
    spec = OPS["linear"]
    _, tensors = _family((300, 97), n=3, seed=7)
    half = [t.to(torch.bfloat16) for t in tensors]
    # halfway cases: a float32 whose low 16 bits are 0x8000 rounds to the even bf16
    half[0].view(-1)[:8] = torch.tensor([1.0, -1.0, 3.0, 5.0, 1.0, 2.0, 0.5, 7.0]).bfloat16()
    p = {"weight": [1.0, 0.0, 0.0], "normalize": False}
    for weights in ([1.0 + 2**-8, 0.0, 0.0], [0.3, 0.7, -0.2], [1.0 + 3 * 2**-8, 0.0, 0.0]):
        p["weight"] = weights
        got = run_fast("linear", half, None, p, out_dtype=torch.bfloat16)
        want = spec.fn([t.float() for t in half], None, **p).to(torch.bfloat16)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), weights


def test_radix_top_k_bracket_and_its_fallback():
    """Large tensors take the one-read bracket around a strided sample's estimate; a layout
    where every sampled entry is tiny makes it miss, and the histogram path still gives the
    eager rule."""

    n = 1 << 19
    g = torch.Generator().manual_seed(4)
    t = (torch.randn(n, generator=g) * 64).round() / 64  # many ties at any threshold
    lib = fused_gta.library()
    for k in (1, 3, n // 100, n // 2, n - 1):
        assert fused_gta._bracketed(lib, t, None, k) is not None or k in (1, n - 1)
        assert fused_gta.top_k_rule(t, None, k) == _lowest_index_rule(t.abs(), k), k
    t[:: n // fused_gta._SAMPLE] = 1e-6  # what the sample sees
    assert fused_gta._bracketed(lib, t, None, n // 100) is None
    assert fused_gta.top_k_rule(t, None, n // 100) == _lowest_index_rule(t.abs(), n // 100)


def test_l1_bins_both_is_the_two_sums():
    """DARE's disk path reads τ once for both rescale sums: the same integers as two reads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        base, (src,) = _family(((1 << 18) + 5,), n=1, seed=11)
        u = Packed.of(torch.rand(base.numel(), generator=torch.Generator().manual_seed(2)))
        whole, kept = fused_gta.l1_bins_both(src, base, u, 0.3)
        assert (whole == fused_gta.l1_bins(src, base)).all()
        assert (kept == fused_gta.l1_bins(src, base, u, 0.3)).all()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear"])
def test_packed_uniforms_ties_redone_exactly(monkeypatch, name):
    """DARE's kernel decides u < p on the uniforms' high 16 bits and redoes the entries whose
    high half equals the rule's (``packed_uniform``). Uniforms crafted so that many entries
    tie — low bits below, equal to and above the rule's, in every 4,096-entry span, on both
    threads, a model at density 1 beside them — give the eager path's bits, rescale included."""
    from evomerge.merge.ops import sparsify
    from evomerge.merge.ops._fast import mt_uniform, packed_uniform

    base, tensors = _family((600, 257), quantized=False, seed=8)
    n = base.numel()
    densities = [0.45, float(torch.tensor(0.3).float()), 1.0]

    def crafted(shape, generator):
        g = torch.Generator().manual_seed(int(torch.randint(1 << 30, (1,), generator=generator)))
        k = torch.randint(1 << 24, (n,), generator=g, dtype=torch.int64)
        p = densities[int(torch.randint(2, (1,), generator=g))]
        tie = packed_uniform.below(p) >> 8
        some = torch.rand(n, generator=g) < 0.05  # 5% tie: every span has ties
        k[some] = (tie << 8) | torch.randint(256, (int(some.sum()),), generator=g)
        return (k.double() * 2**-24).float().reshape(shape)

    monkeypatch.setattr(sparsify, "uniform", crafted)  # the operator's draws
    monkeypatch.setattr(mt_uniform, "uniform_packed", lambda s, g: Packed.of(crafted(s, g)))
    spec = OPS[name]
    calls = _spy(monkeypatch)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for weight in ([0.5, -0.3, 0.8], [1.0, 1.0, 1.0]):
            p = {**spec.defaults, "weight": weight, "density": densities}
            g = lambda: generator_for(5, "w")  # noqa: E731
            got = run_fast(name, tensors, base, p, generator=g())
            want = spec.fn(tensors, base, generator=g(), **p)
            assert _same_bits(got, want), (name, weight)
        assert len(fused_gta._chunks(n)) == 2  # (at 2 threads: whatever OMP_NUM_THREADS says)
    finally:
        torch.set_num_threads(before)
    assert calls


def test_c_helpers_shared_by_python_threads_same_bits():
    """The kernel's helper threads are the C library's own (gta_fused_post / join). One call is
    open at a time: a thread whose call finds another thread's call open runs on Python's pool
    instead. Deferred and direct calls from several Python threads at once, and one made while
    another thread's deferred call is open, all give the single-call bits."""
    from concurrent.futures import ThreadPoolExecutor

    base, tensors = _family((700, 301), quantized=False, seed=12)
    kw = dict(is_tau=False, consensus="sum", normalize=True, scalar_divisor=1.0, lam=1.0)

    def merged(i: int) -> torch.Tensor:
        w = [0.5, -0.3 + 0.1 * i, 0.8]
        out = torch.empty_like(base).view(-1)
        ts = [t.view(-1) for t in tensors]
        fused_gta.run(base.view(-1), ts, thresholds=[(0.01 * i, 0)] * 3, weights=w, out=out, **kw)
        return out

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = [merged(i).clone() for i in range(6)]

        def worker(i: int) -> torch.Tensor:
            if i % 2:
                return merged(i)
            with fused_gta.deferred():
                out = merged(i)
            fused_gta.finish()
            return out

        with ThreadPoolExecutor(3) as pool:
            for _ in range(3):
                got = list(pool.map(worker, range(6)))
                assert all(_same_bits(g, w) for g, w in zip(got, want))
            with fused_gta.deferred():
                held = merged(0)  # posted: its call stays open until finish()
                other = pool.submit(merged, 1).result()  # finds it open: Python's pool
            fused_gta.finish()
        assert _same_bits(held, want[0]) and _same_bits(other, want[1])
        for threads in (4, 2, 3):  # helpers started for 3, later calls wake fewer of them
            torch.set_num_threads(threads)
            for i in (2, 3):
                with fused_gta.deferred():
                    out = merged(i)
                fused_gta.finish()
                assert _same_bits(out, want[i]) and _same_bits(merged(i), want[i]), threads
    finally:
        torch.set_num_threads(before)
