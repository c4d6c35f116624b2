"""The resident cache (sorted |τ|, seeded uniforms, DELLA ranks) changes no bit of a merge:
operators give the uncached bits whether an entry is computed, served or over budget, a changed
seed is never served old draws, and a Materializer over a real tiny model family writes exactly
the tensors `evomerge merge` writes for the same recipes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from evomerge.merge.engine import run_merge
from evomerge.merge.ops import OPS, generator_for
from evomerge.merge.ops._fast.resident_cache import ResidentCache
from evomerge.merge.plan import TensorTask
from evomerge.recipe import ModelRef, Recipe
from evomerge.workers.materialize import ExpertCache, Materializer
from tests.helpers.fast_path import run_fast

METHODS = ["ties", "dare_ties", "breadcrumbs_ties", "breadcrumbs", "della", "dare_linear"]
METHODS += ["task_arithmetic"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _family(shape, n=3, quantized=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g)
    deltas = [torch.randn(*shape, generator=g) * 0.1 for _ in range(n)]
    if quantized:  # many equal magnitudes: ties at the top-k threshold
        base, deltas = (base * 64).round() / 64, [(d * 80).round() / 64 for d in deltas]
    return base, [base + d for d in deltas]


def _run(name, tensors, base, density, seed, resident=None):
    spec = OPS[name]
    p = {**spec.defaults, "weight": [0.5, -0.3, 0.8], "density": density}
    if name.startswith("della"):
        p["epsilon"] = 0.05
    # with a resident view the view makes the tensor's generator (on a miss), as on a worker
    g = generator_for(seed, "w") if spec.stochastic and resident is None else None
    if resident is None:
        return spec.fn(tensors, base, generator=g, **p)  # the plain operator
    return run_fast(name, tensors, base, p, generator=g, resident=resident)


def _task(base):
    ins = (("e0", "w"), ("e1", "w"), ("e2", "w"))
    return TensorTask("w", ins, ("base", "w"), {}, "x", tuple(base.shape))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("shape,quantized", [((40, 30), False), ((33, 17), True), ((97,), False)])
def test_cached_equals_uncached_bits(name, shape, quantized):
    base, tensors = _family(shape, quantized=quantized)
    cache = ResidentCache()
    densities = [0.1, 0.5, [0.9, 1.0, 0.3], [1.0, 0.2, 0.6]]  # 1.0 skips a draw: indices shift
    for seed in (0, 7):
        for density in densities:
            want = _run(name, tensors, base, density, seed)
            for _ in range(2):  # computed, then served
                got = _run(name, tensors, base, density, seed, cache.for_task(_task(base), seed))
                assert _same_bits(got, want), (name, seed, density)
    assert cache.hits > 0 and cache.nbytes > 0


@pytest.mark.parametrize("name", ["ties", "breadcrumbs_ties", "dare_ties", "task_arithmetic"])
def test_streamed_size_and_over_budget_same_bits(name):
    """≥ 4 blocks (ties streams block by block); a budget of one entry: the rest computed."""
    base, tensors = _family((700, 401), quantized=True, seed=3)
    one = base.numel() * 4
    cache = ResidentCache(max_bytes=one)
    for density in (0.05, 0.5, 0.93):
        want = _run(name, tensors, base, density, 1)
        for _ in range(2):
            got = _run(name, tensors, base, density, 1, cache.for_task(_task(base), 1))
            assert _same_bits(got, want), (name, density)
            assert cache.nbytes <= one


def test_dare_keep_rates_in_one_bucket_are_served_from_its_members():
    """DARE with the L1 rescale on tensors large enough for the bucketed L1 table: keep rates
    in a bucket already visited are summed from its kept members, new buckets add members;
    the bits are the uncached merge's throughout."""
    base, tensors = _family((300, 257), seed=4)
    cache = ResidentCache()
    rates = (0.31, 0.312, [0.31, 0.6, 0.9], 0.5, [0.6, 0.313, 0.9])
    for density in rates + rates:
        want = _run("dare_ties", tensors, base, density, 2)
        got = _run("dare_ties", tensors, base, density, 2, cache.for_task(_task(base), 2))
        assert _same_bits(got, want), density
    members = [k for k in cache._entries if k[0] == "dare_l1" and len(k) == 7]
    # one entry per (model, bucket visited): 0.31 and 0.312 share bucket 79, 0.313 is in 80,
    # 0.6 in 153, 0.9 in 230 — models 0, 1, 2 visit {79, 153}, {79, 153, 80}, {79, 230}
    # (0.5 is a bucket edge: its prefix sum needs no members)
    assert len(members) == 2 + 3 + 2


def test_dare_members_follow_the_search_when_the_budget_is_full():
    """With the budget full, a new candidate's bucket members replace the least recently used
    ones of earlier candidates (a search drifts through keep rates), never the current
    candidate's; without a candidate mark (``begin_candidate``) the first ones stay. Bits are
    the uncached merge's throughout."""
    base, tensors = _family((300, 257), seed=6)

    def candidate(cache, density, mark=True):
        if mark:
            cache.begin_candidate()
        want = _run("dare_ties", tensors, base, density, 2)
        got = _run("dare_ties", tensors, base, density, 2, cache.for_task(_task(base), 2))
        assert _same_bits(got, want), density
        return {k[-1] for k in cache._members}  # the buckets whose members are kept

    for mark in (True, False):
        cache = ResidentCache()
        assert candidate(cache, 0.31, mark) == {79}  # every model's bucket 79
        cache.max_bytes = cache.nbytes  # full: room for one bucket's members per model
        if mark:
            assert candidate(cache, 0.6, mark) == {153}  # 79's make room
            assert candidate(cache, 0.6, mark) == {153}  # served
            assert candidate(cache, 0.312, mark) == {79}
            # one candidate needing two new buckets (model 0: 153; others: 230): it may evict
            # 79, used by an earlier candidate, but never what it has just admitted itself
            assert candidate(cache, [0.6, 0.9, 0.9], mark) <= {153, 230}
            kept = {(k[4][0], k[-1]) for k in cache._members}  # (expert, bucket)
            assert ("e0", 153) in kept and kept <= {("e0", 153), ("e1", 230), ("e2", 230)}
        else:
            assert candidate(cache, 0.6, mark) == {79}  # first come, first kept
        assert cache.nbytes <= cache.max_bytes


def test_sorted_abs_is_torch_sort_of_the_magnitudes():
    """The cache's sorted |τ| comes from numpy's sort on CPU: the same values, bit for bit, as
    torch.sort (signed zeros, subnormals, repeats and infinities included)."""
    from evomerge.merge.ops._fast.top_k import sorted_abs

    g = torch.Generator().manual_seed(6)
    x = torch.randn(300, 257, generator=g) * 0.02
    x[::5] = 0.0
    x[1::7] = -0.0
    x[2::11] = 3e-42
    x[3::13] = x[0, 0]
    x[4, :3] = torch.tensor([float("inf"), -float("inf"), 3.4e38])
    want = x.abs().reshape(-1).sort().values
    assert _same_bits(sorted_abs(x), want)


def test_changed_seed_is_not_served_from_the_cache():
    base, tensors = _family((50, 20))
    cache = ResidentCache()
    s0 = _run("dare_ties", tensors, base, 0.5, 0, cache.for_task(_task(base), 0))
    size = cache.nbytes
    hits = cache.hits
    s1 = _run("dare_ties", tensors, base, 0.5, 1, cache.for_task(_task(base), 1))
    assert cache.hits == hits + 3  # only the seed-free Σ|τ_i| of the 3 models were served
    assert _same_bits(s1, _run("dare_ties", tensors, base, 0.5, 1))
    assert not _same_bits(s0, s1)
    assert cache.nbytes == size  # seed 0's draws were dropped, seed 1's took their place
    assert all(k[1] == 1 for k in cache._entries if k[0] == "uniform")


def _tiny(path, seed, hidden=32):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64 * hidden // 32,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return str(path)


def test_materializer_writes_the_bits_of_evomerge_merge(tmp_path):
    base, *experts = [_tiny(tmp_path / n, s) for s, n in enumerate(["base", "a", "b", "c"])]
    cached = Materializer(ExpertCache())
    plain = Materializer(ExpertCache(stats=False))
    runs = [
        ("ties", 0.3, 0),
        ("dare_ties", 0.5, 0),
        ("dare_ties", 0.7, 0),
        ("dare_ties", 0.5, 5),
        ("breadcrumbs_ties", 0.6, 0),
        ("della", 0.4, 2),
        ("linear", 1.0, 0),
        ("task_arithmetic", 1.0, 0),
    ]
    for i, (method, density, seed) in enumerate(runs):
        p = {"weight": 0.4} if method == "linear" else {"weight": 0.5, "density": density}
        recipe = Recipe(
            merge_method=method,
            models=[ModelRef(model=e, parameters=p) for e in experts],
            base_model=None if method == "linear" else base,
            parameters={"epsilon": 0.1} if method == "della" else {},
            seed=seed,
        )
        run_merge(recipe, tmp_path / f"m{i}")
        disk = {}
        for f in sorted((tmp_path / f"m{i}").glob("*.safetensors")):
            disk.update(load_file(str(f)))
        for mat in (cached, plain):
            params = dict(mat.materialize(recipe).named_parameters())
            for name, want in disk.items():
                assert _same_bits(params[name], want), (method, seed, name)
    assert cached.cache.stats.hits > 0 and plain.cache.stats is None


def test_deferred_kernel_writes_the_bits_of_evomerge_merge(tmp_path):
    """Tensors of ≥ 64K entries (hidden 256) on 2 threads: each fused kernel call writes its
    parameter while the next tensor is prepared (fused_gta.deferred). The materialized model is
    still `evomerge merge`'s, bit for bit, for consecutive candidates; a candidate that fails
    halfway leaves no kernel call running."""
    from evomerge.merge.ops._fast import fused_gta

    if fused_gta.library() is None:
        pytest.skip("no C compiler here")
    names = ["base", "a", "b", "c"]
    base, *experts = [_tiny(tmp_path / n, s, hidden=256) for s, n in enumerate(names)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        mat = Materializer(ExpertCache())
        for i, (method, density, w) in enumerate(
            [("ties", 0.3, 0.5), ("dare_ties", 0.45, 0.7), ("ties", 0.6, 0.2)]
        ):
            p = {"weight": w, "density": density}
            recipe = Recipe(
                merge_method=method,
                models=[ModelRef(model=e, parameters=p) for e in experts],
                base_model=base,
                seed=3,
            )
            run_merge(recipe, tmp_path / f"m{i}")
            disk = load_file(str(next((tmp_path / f"m{i}").glob("*.safetensors"))))
            params = dict(mat.materialize(recipe).named_parameters())
            assert max(t.numel() for t in disk.values()) >= 1 << 16
            for name, want in disk.items():
                assert _same_bits(params[name], want), (method, name)
        real = mat.cache.tensor

        def fail_late(ref, name):  # the last tensor's inputs are missing
            if name == "lm_head.weight":
                raise KeyError(name)
            return real(ref, name)

        mat.cache.tensor = fail_late
        with pytest.raises(KeyError):
            mat.materialize(recipe)
        assert getattr(fused_gta._local, "pending", None) is None
    finally:
        torch.set_num_threads(before)
