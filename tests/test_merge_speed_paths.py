"""The merge engine's fast paths give the bits of the straightforward ones: selection top-k vs a
full argsort, the fused sign-consensus sum vs the stacked masked form, the one-pass NaN/Inf check,
and the pipelined (prefetch + write-behind) merge vs the sequential one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.errors import UserInputError
from evomerge.merge.checks import check_finite
from evomerge.merge.ops import OPS, generator_for
from evomerge.merge.ops._fast import gta
from evomerge.merge.ops._registry import per_model
from evomerge.merge.ops.sparsify import kth_largest, top_k_mask
from evomerge.merge.ops.task_arithmetic import consensus_mask, general_task_arithmetic


def _argsort_mask(mag: torch.Tensor, k: int, stable: bool = False) -> torch.Tensor:
    order = torch.sort(mag, descending=True, stable=stable).indices
    mask = torch.zeros(mag.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask


@pytest.mark.parametrize("n", [7, 1000, 300_000, 1_100_003])
def test_top_k_equals_argsort_on_distinct_magnitudes(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    mag = torch.randperm(n, generator=g).float() + 0.5  # distinct by construction
    for density in (0.001, 0.1, 0.5, 0.9, 0.999):
        k = max(1, int(density * n))
        assert torch.equal(top_k_mask(mag, k), _argsort_mask(mag, k)), (n, density)


def test_top_k_ties_follow_mergekits_argsort() -> None:
    """mergekit keeps ``torch.argsort(|τ|, descending=True)[:k]`` (unstable: which tied entries
    come first is torch's introsort's choice): the same set, except that zeros tied at a
    threshold of 0 (the same values kept or not) are kept lowest index first."""
    g = torch.Generator().manual_seed(1)
    unstable = False
    for n in (50, 600_001):
        mag = torch.randint(0, 20, (n,), generator=g).float()  # every value tied many times
        for k in (1, n // 3, n // 2, n - 1):
            got = top_k_mask(mag, k)
            assert int(got.sum()) == k
            want = _argsort_mask(mag, k)
            unstable |= not torch.equal(want, _argsort_mask(mag, k, stable=True))
            nonzero = mag > 0
            assert torch.equal(got[nonzero], want[nonzero]), (n, k)
    assert unstable  # not vacuous: mergekit's order is not the lowest-index one


def test_kth_largest_exact_when_the_sample_misleads() -> None:
    n = 1 << 20
    mag = torch.arange(n, dtype=torch.float32) + 1e6
    mag[:: n // (1 << 16)] = 0.0  # every sampled position is tiny: the bracket misses
    for k in (1, n // 2, n - 5):
        assert kth_largest(mag, k) == torch.sort(mag, descending=True).values[k - 1]


def _old_gta(tensors, base, *, sparsification, consensus, generator, **p):
    """The stacked, mask-multiplying form (as mergekit 0.1.5 computes it)."""
    from evomerge.merge.ops.task_arithmetic import sparsify_one

    n = len(tensors)
    deltas = torch.stack(
        [sparsify_one(t - base, sparsification, i, n, p, generator) for i, t in enumerate(tensors)]
    )
    weights = torch.tensor(per_model(p, "weight", n), dtype=deltas.dtype)
    weights = weights.reshape((n,) + (1,) * (deltas.dim() - 1))
    weighted = deltas * weights
    if consensus:
        mask = consensus_mask(weighted, consensus)
        mixed = (weighted * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = weights.sum(dim=0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    if p.get("normalize", False):
        mixed = mixed / divisor
    lam = float(p.get("lambda", 1.0))
    if lam != 1:
        mixed = mixed * lam
    return base + mixed


PRESETS = {
    "ties": ("magnitude", "sum"),
    "task_arithmetic": (None, None),
    "dare_ties": ("random", "sum"),
    "breadcrumbs_ties": ("magnitude_outliers", "sum"),
    "della": ("della_magprune", "sum"),
}


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("n", [1, 3, 6])
def test_fused_consensus_same_bits_as_stacked(name: str, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    base = torch.randn(40, 30, generator=g)
    tensors = [base + 0.1 * torch.randn(40, 30, generator=g) for _ in range(n)]
    spec = OPS[name]
    weights = [(-0.3 if i == 1 else 0.2 + 0.15 * i) for i in range(n)]
    for normalize, lam in ((True, 1.0), (False, 0.7)):
        p = {**spec.defaults, "weight": weights, "density": [0.6] * n, "normalize": normalize}
        p["lambda"] = lam
        sp, cons = PRESETS[name]
        for method in ("sum", "count") if cons else (None,):
            gen = lambda: generator_for(3, "w") if spec.stochastic else None  # noqa: E731
            kw = {"sparsification": sp, "consensus": method}
            new = general_task_arithmetic(tensors, base, generator=gen(), **kw, **p)
            old = _old_gta(tensors, base, generator=gen(), **kw, **p)
            assert torch.equal(new, old), (name, n, normalize, method)
    assert all(torch.isfinite(t).all() for t in tensors)  # inputs untouched by in-place work


@pytest.mark.parametrize("name", ["ties", "task_arithmetic"])
def test_streamed_blocks_same_bits_as_whole_tensor(name: str) -> None:
    """Tensors of ≥ 4 blocks go block by block (the fast path's route without the C kernel);
    quantized values put many ties at the top-k threshold, some inside a block, so the split
    rule is exercised too. The fast path's own route (the kernel, where there is one) too."""
    g = torch.Generator().manual_seed(9)
    base = (torch.randn(700, 401, generator=g) * 64).round() / 64
    tensors = [base + (torch.randn(700, 401, generator=g) * 8).round() / 64 for _ in range(3)]
    sp, cons = PRESETS[name]
    for density in ([0.5, 0.3, 1.0], [0.9, 0.0, 0.05]):
        p = {**OPS[name].defaults, "weight": [0.5, 0.3, 0.7], "density": density}
        p["normalize"] = name == "ties"
        kw = {"sparsification": sp, "consensus": cons, "generator": None}
        assert gta._streamable(tensors, base, sp, p)
        w = [base.new_tensor(x) for x in p["weight"]]
        streamed = gta._streamed(tensors, base, w, sp, cons, p)
        fast = gta._merge(tensors, base, sp, cons, p, None, None, lambda: None)
        old = _old_gta(tensors, base, **kw, **p)
        assert torch.equal(streamed, old) and torch.equal(fast, old), (name, density)
        assert torch.equal(general_task_arithmetic(tensors, base, **kw, **p), old)


def test_check_finite_one_pass() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        t = torch.randn(1000).to(dtype)
        check_finite(t, "m", "w")
        for bad in (float("nan"), float("inf"), float("-inf")):
            u = t.clone()
            u[777] = bad
            with pytest.raises(UserInputError, match="1 NaN/Inf"):
                check_finite(u, "m", "w")
    check_finite(torch.arange(5), "m", "w")  # integers are not checked


# ---- the pipelined engine: the same bytes, errors surface, no leftovers ----------------------
@pytest.fixture(scope="module")
def fam(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    from tests.helpers.tiny_models import make_tiny_llama_family

    return make_tiny_llama_family(tmp_path_factory.mktemp("fam"), n_experts=3, layers=3, hidden=32)


def _recipe(base: str, experts: list[str], method: str):
    from evomerge.recipe import ModelRef, Recipe

    return Recipe(
        merge_method=method,
        base_model=base,
        models=[ModelRef(model=e, parameters={"weight": 0.4, "density": 0.5}) for e in experts],
        out_dtype="bfloat16",
        seed=5,
    )


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_pipelined_merge_writes_the_sequential_bytes(fam, tmp_path: Path, method: str) -> None:
    from evomerge.merge.engine import run_merge

    base, experts = fam
    r = _recipe(base, experts, method)
    a = run_merge(r, tmp_path / "seq", pipeline=False, max_shard_bytes=20_000)
    b = run_merge(r, tmp_path / "pipe", pipeline=True, max_shard_bytes=20_000)
    assert a.shards == b.shards > 1
    files = sorted(p.name for p in (tmp_path / "seq").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "pipe").iterdir())
    for f in files:
        assert (tmp_path / "seq" / f).read_bytes() == (tmp_path / "pipe" / f).read_bytes(), f
    base_t = load_file(str(Path(base) / "model.safetensors"))
    out = {
        k: v
        for f in (tmp_path / "pipe").glob("*.safetensors")
        for k, v in load_file(str(f)).items()
    }
    assert set(out) == set(base_t) and any(
        not torch.equal(out[k], base_t[k].bfloat16()) for k in out
    )


def test_write_thread_error_reaches_caller_and_leaves_nothing(fam, tmp_path: Path) -> None:
    from evomerge.merge.engine import run_merge

    base, experts = fam
    seen: list[str] = []

    def boom(name: str) -> None:
        seen.append(name)
        if len(seen) == 3:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_merge(_recipe(base, experts, "ties"), tmp_path / "out", on_tensor=boom)
    assert len(seen) == 3  # nothing written after the failure
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder


def test_read_thread_error_and_early_close(fam, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import save_file

    from evomerge.merge.engine import iter_merged_tensors, plan, run_merge

    base, experts = fam
    bad = tmp_path / "bad"
    shutil.copytree(experts[0], bad)
    t = load_file(str(bad / "model.safetensors"))
    t["model.layers.2.mlp.up_proj.weight"][0, 3] = float("nan")
    save_file(t, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserInputError, match="model.layers.2.mlp.up_proj.weight holds 1 NaN"):
        run_merge(_recipe(base, [str(bad), experts[1]], "ties"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    it = iter_merged_tensors(plan(_recipe(base, experts, "ties")))
    assert next(it)[0] and next(it)[0]
    it.close()  # stops the reader thread without reading the rest


def test_slerp_with_scratch_buffers_is_the_plain_formula() -> None:
    """slerp reuses two buffers for its normalised copies and the result: same bits as the
    expression written out (mergekit's)."""
    from evomerge.merge.ops.slerp import slerp_tensors

    def plain(t, v0, v1):
        a, b = v0.reshape(-1), v1.reshape(-1)
        dot = ((a / a.norm()) * (b / b.norm())).sum().clamp(-1, 1)
        theta = torch.acos(dot)
        s = torch.sin(theta)
        return (torch.sin((1 - t) * theta) / s) * v0 + (torch.sin(t * theta) / s) * v1

    g = torch.Generator().manual_seed(1)
    for shape in [(300, 200), (1001,), (16, 8, 3)]:
        v0 = torch.randn(*shape, generator=g)
        v1 = 0.5 * v0 + 0.3 * torch.randn(*shape, generator=g)
        for t in (0.0, 0.3, 1.0):
            got = slerp_tensors(t, v0, v1)
            assert got.shape == v0.shape and torch.equal(
                got.view(torch.int32), plain(t, v0, v1).view(torch.int32)
            )


def test_conversion_buffer_gives_torch_conversions() -> None:
    """The writer's one scratch buffer, reused and grown across tensors: each result is
    ``t.to(dtype)``, and a same-dtype tensor passes through."""
    from evomerge.io.safetensors_io import ConversionBuffer

    convert = ConversionBuffer()
    g = torch.Generator().manual_seed(2)
    for shape in [(50, 40), (3,), (200, 70), (), (0, 5), (10, 10)]:
        t = torch.randn(shape, generator=g)
        for dtype in (torch.bfloat16, torch.float16):
            assert torch.equal(convert(t, dtype).view(torch.int16), t.to(dtype).view(torch.int16))
        assert convert(t, torch.float32).data_ptr() == t.data_ptr()
