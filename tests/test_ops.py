"""Operator registry: conformance over every entry, algebraic invariants, mergekit parity."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import UserInputError
from evomerge.merge.ops import OPS, generator_for, get_op, list_ops

SHAPE = (6, 5)


def _inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g)
    return [base + 0.1 * torch.randn(SHAPE, generator=g) for _ in range(n)], base


def _params(spec, n: int) -> dict:
    p = dict(spec.defaults)
    for name in spec.per_model_params:
        if name not in p:
            p[name] = [1.0 / n] * n
        elif name == "density":
            p[name] = [0.5] * n
    for name in spec.global_params:
        p.setdefault(name, 0.3 if name == "t" else p.get(name))
    return p


def _n_models(spec) -> int:
    return spec.max_models if spec.max_models is not None else max(3, spec.min_models)


def _call(spec, tensors, base, p, seed=0, name="model.layers.0.mlp.up_proj.weight"):
    g = generator_for(seed, name) if spec.stochastic else None
    return spec.fn(tensors, base if spec.needs_base else None, generator=g, **p)


@pytest.mark.parametrize("name", list_ops())
def test_conformance(name):
    spec = get_op(name)
    assert spec.paper, f"{name} must name its paper"
    n = _n_models(spec)
    tensors, base = _inputs(n)
    copies = [t.clone() for t in tensors] + [base.clone()]
    p = _params(spec, n)
    out = _call(spec, tensors, base, p)
    assert out.shape == SHAPE and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    for before, after in zip(copies, tensors + [base]):
        assert torch.equal(before, after), "operators must not modify their inputs"
    again = _call(spec, tensors, base, p)
    assert torch.equal(out, again), "same inputs and generator seed must give the same bits"


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(-1), b.view(-1))


@pytest.mark.parametrize("name", list_ops())
def test_plain_signature_and_fast_path_bits(name):
    """Every operator is plain ``(tensors, base, *, generator, **params)``, and the engine's route
    to it (``evomerge.merge.ops._fast``, asked once per tensor, else the operator) gives the
    operator's bits: on a small and a large tensor (C kernel, radix top-k, threads), into a
    given ``out`` buffer, with a search worker's cache (computed, then served), and from
    bfloat16 inputs as stored where the fast path reads them so."""
    import inspect

    from evomerge.merge.ops import _fast
    from evomerge.merge.ops._fast.resident_cache import ResidentCache
    from evomerge.merge.plan import TensorTask
    from tests.helpers.fast_path import run_fast

    spec = get_op(name)
    sig = inspect.signature(spec.fn).parameters
    assert list(sig)[:2] == ["tensors", "base"] and "generator" in sig, name
    kinds = {k: v.kind for k, v in sig.items()}
    assert set(kinds) - {"tensors", "base", "generator"} == {
        k for k, v in kinds.items() if v == inspect.Parameter.VAR_KEYWORD
    }, f"{name}: nothing beyond (tensors, base, *, generator, **params)"
    n = _n_models(spec)
    tname = "model.layers.0.mlp.up_proj.weight"
    for shape, seed in (((6, 5), 0), ((300, 257), 1)):
        g = torch.Generator().manual_seed(seed)
        base = (torch.randn(shape, generator=g) * 64).round() / 64  # ties at top-k thresholds
        tensors = [base + (torch.randn(shape, generator=g) * 8).round() / 64 for _ in range(n)]
        b = base if spec.needs_base else None
        p = _params(spec, n)
        want = _call(spec, tensors, base, p, name=tname)

        def gen():
            return generator_for(0, tname) if spec.stochastic else None

        assert _same_bits(run_fast(name, tensors, b, p, generator=gen()), want), (name, shape)
        out = torch.empty_like(want)
        assert _same_bits(run_fast(name, tensors, b, p, generator=gen(), out=out), want)
        task = TensorTask(tname, tuple((f"e{i}", tname) for i in range(n)), ("base", tname), {},
                          name, shape)  # fmt: skip
        cache = ResidentCache()
        for _ in range(2):
            view = cache.for_task(task, 0)
            got = run_fast(name, tensors, b, p, generator=gen(), resident=view, out=out)
            assert _same_bits(got, want), (name, shape, "resident")
        if _fast.reads_stored_bf16(name):
            half = [t.bfloat16() for t in tensors]
            hb = base.bfloat16() if b is not None else None
            plain = spec.fn([t.float() for t in half], None if hb is None else hb.float(),
                            generator=gen(), **p)  # fmt: skip
            assert _same_bits(run_fast(name, half, hb, p, generator=gen()), plain)
            got = run_fast(name, half, hb, p, generator=gen(), out_dtype=torch.bfloat16)
            assert _same_bits(got.to(torch.bfloat16), plain.to(torch.bfloat16))


def test_unknown_op_lists_valid_names():
    with pytest.raises(UserInputError, match="ties"):
        get_op("tie")


def test_required_params_declared():
    assert get_op("ties").required == ("weight",)
    assert get_op("slerp").required == ("t",)
    assert "weight" in get_op("linear").required


def test_one_hot_linear_is_identity():
    tensors, _ = _inputs(3)
    out = OPS["linear"].fn(tensors, None, generator=None, weight=[0, 1, 0], normalize=True)
    assert torch.equal(out, tensors[1])


def test_ta_one_model_lambda_one_gives_it_back():
    tensors, base = _inputs(1)
    out = OPS["task_arithmetic"].fn(tensors, base, generator=None, weight=[1.0], **{"lambda": 1.0})
    torch.testing.assert_close(out, tensors[0], rtol=0, atol=1e-6)


def test_ties_density_one_without_conflicts_is_task_arithmetic():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(SHAPE, generator=g)
    deltas = [torch.rand(SHAPE, generator=g) for _ in range(3)]  # all positive: no sign conflict
    tensors = [base + d for d in deltas]
    w = [0.2, 0.5, 0.3]
    ties = OPS["ties"].fn(
        tensors, base, generator=None, weight=w, density=[1.0] * 3, normalize=False
    )
    ta = OPS["task_arithmetic"].fn(tensors, base, generator=None, weight=w)
    torch.testing.assert_close(ties, ta, rtol=0, atol=1e-6)


def test_slerp_endpoints():
    tensors, base = _inputs(1)
    assert torch.allclose(OPS["slerp"].fn(tensors, base, generator=None, t=0.0), base, atol=1e-6)
    assert torch.allclose(
        OPS["slerp"].fn(tensors, base, generator=None, t=1.0), tensors[0], atol=1e-6
    )


def test_dare_keep_rate_and_rescale_expectation():
    base = torch.zeros(200, 200)
    tensor = base + 1.0
    p = dict(weight=[1.0], density=[0.3], rescale=False)
    out = OPS["dare_linear"].fn([tensor], base, generator=generator_for(0, "x"), **p)
    keep = (out != 0).float().mean().item()
    assert abs(keep - 0.3) < 0.02
    # rescaled: expectation over seeds tends to tau; density 1 is the identity
    g = torch.Generator().manual_seed(3)
    tau = torch.randn(50, 50, generator=g)
    acc = torch.zeros_like(tau)
    for s in range(200):
        acc += OPS["dare_linear"].fn(
            [tau],
            torch.zeros_like(tau),
            generator=generator_for(s, "x"),
            weight=[1.0],
            density=[0.5],
            rescale=True,
        )
    assert (acc / 200 - tau).abs().mean() < 0.1 * tau.abs().mean()
    ident = OPS["dare_linear"].fn(
        [tau],
        torch.zeros_like(tau),
        generator=generator_for(0, "x"),
        weight=[1.0],
        density=[1.0],
        rescale=True,
    )
    assert torch.equal(ident, tau)


def test_stochastic_bits_depend_on_seed_and_name_only():
    tensors, base = _inputs(2)
    p = dict(weight=[0.5, 0.5], density=[0.5, 0.5], rescale=True, normalize=False)
    a = OPS["dare_ties"].fn(tensors, base, generator=generator_for(7, "a.weight"), **p)
    torch.randn(100)  # global RNG use in between must not matter
    OPS["dare_ties"].fn(tensors, base, generator=generator_for(7, "b.weight"), **p)
    b = OPS["dare_ties"].fn(tensors, base, generator=generator_for(7, "a.weight"), **p)
    c = OPS["dare_ties"].fn(tensors, base, generator=generator_for(8, "a.weight"), **p)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_model_stock_of_identical_finetunes_is_that_finetune():
    tensors, base = _inputs(1)
    out = OPS["model_stock"].fn([tensors[0]] * 3, base, generator=None, filter_wise=False)
    torch.testing.assert_close(out, tensors[0], rtol=0, atol=1e-5)


def test_consensus_k0_equals_task_arithmetic():
    tensors, base = _inputs(3)
    out = OPS["consensus"].fn(
        tensors, base, generator=None, weight=[1.0] * 3, tall_lambda=[0.4] * 3, k=0, alpha=0.7
    )
    ta = OPS["task_arithmetic"].fn(
        tensors, base, generator=None, weight=[1.0] * 3, **{"lambda": 0.7}
    )
    torch.testing.assert_close(out, ta, rtol=0, atol=1e-6)


def test_consensus_drops_selfish_weights():
    base = torch.zeros(4)
    t1 = torch.tensor([1.0, 1.0, 0.0, 0.0])
    t2 = torch.tensor([1.0, 0.0, 1.0, 0.0])
    out = OPS["consensus"].fn(
        [t1, t2], base, generator=None, weight=[1.0, 1.0], tall_lambda=[0.5, 0.5], k=2, alpha=1.0
    )
    # coordinate 0 is important to both tasks; 1 and 2 only to one (selfish); 3 to none
    assert out.tolist() == [2.0, 0.0, 0.0, 0.0]


# ---- parity with mergekit 0.1.5's own tensor functions ----------------------------------
mk_sparsify = pytest.importorskip("mergekit.sparsify")


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_magnitude_matches_mergekit(density):
    from evomerge.merge.ops import sparsify

    t = torch.randn(33, 17, generator=torch.Generator().manual_seed(4))
    for rescale in (False, True):
        ours = sparsify.magnitude(t, density, rescale)
        theirs = mk_sparsify.magnitude(t, density, mk_sparsify.RescaleNorm.l1 if rescale else None)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    ours = sparsify.magnitude_outliers(t, density, 0.05, False)
    theirs = mk_sparsify.magnitude_outliers(t, density, None, gamma=0.05)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_sign_consensus_matches_mergekit():
    from mergekit.merge_methods.generalized_task_arithmetic import get_mask

    from evomerge.merge.ops.task_arithmetic import consensus_mask

    d = torch.randn(4, 10, 7, generator=torch.Generator().manual_seed(5))
    for method in ("sum", "count"):
        assert torch.equal(consensus_mask(d, method), get_mask(d, method).to(d.dtype))


@pytest.mark.parametrize("t", [0.0, 0.25, 0.7, 1.0])
def test_slerp_matches_mergekit(t):
    from mergekit.merge_methods.slerp import slerp as mk_slerp

    tensors, base = _inputs(1, seed=6)
    ours = OPS["slerp"].fn(tensors, base, generator=None, t=t)
    theirs = mk_slerp(torch.tensor([t]), base.unsqueeze(0), tensors[0].unsqueeze(0))[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_nuslerp_matches_mergekit():
    from mergekit.merge_methods.nuslerp import nuslerp as mk_nuslerp

    tensors, base = _inputs(2, seed=7)
    for row_wise, flatten in ((False, True), (True, False), (False, False)):
        ours = OPS["nuslerp_ta"].fn(
            tensors,
            base,
            generator=None,
            weight=[0.3, 0.7],
            nuslerp_row_wise=row_wise,
            nuslerp_flatten=flatten,
        )
        theirs = base + mk_nuslerp(
            0.7, tensors[0] - base, tensors[1] - base, dim=0 if row_wise else -1, flatten=flatten
        )
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
