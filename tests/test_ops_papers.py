"""The seed papers' operators and weight rules against their definitions: PCB-Merging, TSV-Merge,
Multi-SLERP (mergekit parity), VaRM and MWA; plus end-to-end merges of a tiny Llama."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.errors import UserInputError
from evomerge.io.folder import DiskSource
from evomerge.merge.engine import run_merge
from evomerge.merge.ops import OPS, list_ops
from evomerge.merge.weight_rules import mwa_weights, resolve_weight_rules, varm_weights
from evomerge.recipe import ModelRef, Recipe, WeightRule
from evomerge.recipe_mergekit import to_mergekit_yaml
from tests.helpers.tiny_models import make_tiny_llama_family

NEW_OPS = ("pcb", "tsv", "multislerp", "multislerp_ta", "aim_ties", "aim_task_arithmetic")


def test_new_ops_are_registered_for_the_conformance_suite():
    assert set(NEW_OPS) <= set(list_ops())  # tests/test_ops.py parametrizes over list_ops()
    assert all(OPS[n].paper for n in NEW_OPS)


# ---- PCB-Merging ----------------------------------------------------------------------------
def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _np_minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def _pcb_reference(taus: list[np.ndarray], r: float, lam: float) -> np.ndarray:
    """The paper's equations, element by element in float64."""
    n, d = len(taus), taus[0].size
    flat = [t.reshape(-1).astype(np.float64) for t in taus]
    betas = []
    for i in range(n):
        intra = _np_softmax(n * _np_minmax(flat[i] * flat[i]))
        inter = sum(_np_softmax(_np_minmax(flat[i] * flat[j])) for j in range(n))
        beta = intra * inter
        cut = np.sort(beta)[d - max(1, int(r * d))]  # keep the top r of β_i
        betas.append(np.where(beta >= cut, beta, 0.0))
    num = sum(b * t for b, t in zip(betas, flat))
    den = sum(betas)
    fused = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return lam * fused.reshape(taus[0].shape)


@pytest.mark.parametrize("n,r,lam", [(2, 0.5, 1.0), (2, 0.2, 0.8), (3, 1.0, 1.3), (3, 0.3, 1.0)])
def test_pcb_matches_the_papers_equations(n, r, lam):
    g = torch.Generator().manual_seed(n * 10 + int(r * 10))
    base = torch.randn(5, 6, generator=g)
    taus = [0.3 * torch.randn(5, 6, generator=g) for _ in range(n)]
    out = OPS["pcb"].fn([base + t for t in taus], base, density=r, **{"lambda": lam})
    want = _pcb_reference([t.numpy() for t in taus], r, lam)
    torch.testing.assert_close(out - base, torch.from_numpy(want).float(), rtol=1e-4, atol=1e-6)


def test_pcb_drop_keeps_base_where_no_model_scores_high():
    # Two models that move disjoint halves: with r = 0.5 each keeps exactly its own half, the
    # fused delta there is that model's τ (weight β̂_i / β̂_i = 1), elsewhere nothing is kept.
    base = torch.zeros(8)
    t1 = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    t2 = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    out = OPS["pcb"].fn([t1, t2], base, density=0.25, **{"lambda": 1.0})
    assert out.tolist() == [4.0, 3.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0]


def test_pcb_identical_models_give_that_model_back():
    g = torch.Generator().manual_seed(3)
    base, tau = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    out = OPS["pcb"].fn([base + tau] * 3, base, density=1.0, **{"lambda": 1.0})
    torch.testing.assert_close(out, base + tau, rtol=0, atol=1e-6)


# ---- TSV-Merge ------------------------------------------------------------------------------
def _orthogonal_task_vectors(m: int, n: int, rank: int, tasks: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    qu, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    qv, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    out = []
    for t in range(tasks):
        cols = slice(t * rank, (t + 1) * rank)
        s = torch.rand(rank, generator=g, dtype=torch.float64) + 0.5
        out.append(((qu[:, cols] * s) @ qv[:, cols].T).float())
    return out


def test_tsv_of_orthogonal_task_vectors_is_task_arithmetic():
    # Each task lives in its own left and right singular subspace: there is no interference,
    # orthogonalisation changes nothing, and TSV = base + α Σ τ_t (task arithmetic, λ = α).
    # Rank 3 = k = ⌊10 / 3⌋, so the truncation keeps each task exactly (no null-space vectors).
    taus = _orthogonal_task_vectors(12, 10, rank=3, tasks=3)
    base = torch.randn(12, 10, generator=torch.Generator().manual_seed(1))
    tensors = [base + t for t in taus]
    out = OPS["tsv"].fn(tensors, base, rank_fraction=1.0, alpha=0.7)
    ta = OPS["task_arithmetic"].fn(tensors, base, weight=[1.0] * 3, **{"lambda": 0.7})
    torch.testing.assert_close(out, ta, rtol=0, atol=1e-5)


def test_tsv_rank_fraction_one_with_one_model_gives_it_back():
    g = torch.Generator().manual_seed(2)
    base, model = torch.randn(9, 6, generator=g), torch.randn(9, 6, generator=g)
    out = OPS["tsv"].fn([model], base, rank_fraction=1.0, alpha=1.0)
    torch.testing.assert_close(out, model, rtol=0, atol=1e-5)


def _tsv_reference(deltas: list[np.ndarray], rho: float) -> np.ndarray:
    """TSV in float64 NumPy: truncated SVDs, Procrustes-orthogonalised concatenation."""
    k = max(1, int(rho * min(deltas[0].shape) / len(deltas)))
    svds = [np.linalg.svd(d.astype(np.float64), full_matrices=False) for d in deltas]
    u = np.concatenate([s[0][:, :k] for s in svds], axis=1)
    sig = np.concatenate([s[1][:k] for s in svds])
    vh = np.concatenate([s[2][:k] for s in svds], axis=0)
    pu, _, qu = np.linalg.svd(u, full_matrices=False)
    pv, _, qv = np.linalg.svd(vh, full_matrices=False)
    return (pu @ qu) @ np.diag(sig) @ (pv @ qv)


@pytest.mark.parametrize("rho", [1.0, 0.5])
def test_tsv_matches_reference_and_averages_vectors(rho):
    g = torch.Generator().manual_seed(4)
    base = torch.randn(10, 8, generator=g)
    taus = [0.2 * torch.randn(10, 8, generator=g) for _ in range(3)]
    out = OPS["tsv"].fn([base + t for t in taus], base, rank_fraction=rho, alpha=1.0)
    want = torch.from_numpy(_tsv_reference([t.numpy() for t in taus], rho)).float()
    torch.testing.assert_close(out - base, want, rtol=1e-4, atol=1e-5)
    b1, v = torch.zeros(8), [torch.randn(8, generator=g) for _ in range(3)]
    out1 = OPS["tsv"].fn(v, b1, rank_fraction=rho, alpha=0.5)
    torch.testing.assert_close(out1, 0.5 * sum(v) / 3, rtol=0, atol=1e-6)
    with pytest.raises(UserInputError, match="rank_fraction"):
        OPS["tsv"].fn([base + t for t in taus], base, rank_fraction=1.5, alpha=1.0)


def test_tsv_wide_tensor_and_degenerate_task_vectors():
    # The fast path works on the wide side (eigh of the smaller Gram matrix); a zero or duplicated
    # task vector makes the concatenated singular vectors rank-deficient, where it must fall back
    # to the SVD instead of dividing by a zero singular value.
    g = torch.Generator().manual_seed(5)
    base = torch.randn(6, 11, generator=g)
    taus = [0.3 * torch.randn(6, 11, generator=g) for _ in range(2)]
    out = OPS["tsv"].fn([base + t for t in taus], base, rank_fraction=1.0, alpha=1.0)
    want = torch.from_numpy(_tsv_reference([t.numpy() for t in taus], 1.0)).float()
    torch.testing.assert_close(out - base, want, rtol=1e-4, atol=1e-5)
    for degenerate in ([base, base + taus[0]], [base + taus[0]] * 2):
        out = OPS["tsv"].fn(degenerate, base, rank_fraction=1.0, alpha=1.0)
        assert torch.isfinite(out).all()


# ---- Multi-SLERP: parity with mergekit 0.1.5 ------------------------------------------------
def test_multislerp_matches_mergekit():
    mk = pytest.importorskip("mergekit.merge_methods.multislerp").multislerp
    from mergekit.merge_methods.base import PerInputValues, TensorGroup

    g = torch.Generator().manual_seed(5)
    base = torch.randn(6, 5, generator=g)
    tensors = [base + 0.1 * torch.randn(6, 5, generator=g) for _ in range(3)]
    for w, use_base, norm in (
        ([0.2, 0.5, 0.3], True, True),
        ([1.0, 2.0, 0.5], False, True),
        ([0.3, 0.3, 0.1], True, False),
    ):
        entries = ([base] if use_base else []) + [t.clone() for t in tensors]
        group = TensorGroup.from_tensors(entries, base_index=0 if use_base else None)
        ids = [e.id for e in group.non_base]
        theirs = mk.implementation(
            group, weight=PerInputValues(list(zip(ids, w))), normalize_weights=norm, eps=1e-8
        )
        name = "multislerp_ta" if use_base else "multislerp"
        ours = OPS[name].fn(
            tensors, base if use_base else None, weight=w, normalize_weights=norm, eps=1e-8
        )
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_multislerp_two_models_is_slerp_of_task_vectors_and_one_model_is_identity():
    base = torch.zeros(2)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    out = OPS["multislerp_ta"].fn([a, b], base, weight=[0.5, 0.5])
    torch.testing.assert_close(out, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    assert torch.equal(OPS["multislerp"].fn([a], None, weight=[1.0]), a)


# ---- weight rules: VaRM and MWA -------------------------------------------------------------
def _folder(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"))
    return str(path)


def test_varm_weights_by_hand(tmp_path):
    base = _folder(tmp_path / "b", {"a.weight": torch.zeros(2, 2), "b": torch.ones(3)})
    e1 = _folder(tmp_path / "e1", {"a.weight": torch.ones(2, 2), "b": torch.tensor([1, 1, 4.0])})
    e2 = _folder(tmp_path / "e2", {"a.weight": -2 * torch.ones(2, 2), "b": torch.full((3,), 2.0)})
    w = varm_weights(base, [e1, e2], DiskSource())
    # mean squared change: a: 1 vs 4 -> 0.2/0.8;  b: (0+0+9)/3 = 3 vs 1 -> 0.75/0.25
    assert w == {"a.weight": [0.2, 0.8], "b": [0.75, 0.25]}
    same = varm_weights(base, [base, base], DiskSource())
    assert same["a.weight"] == [0.5, 0.5]  # nobody moved: uniform


def test_mwa_weights_by_hand():
    assert mwa_weights("loss", [2.0, 1.0], 2.0) == pytest.approx([0.2, 0.8])
    assert mwa_weights("step", [100, 300], 1.0) == pytest.approx([0.25, 0.75])
    assert mwa_weights("loss", [0.7, 1.9, 3.0], 0.0) == pytest.approx([1 / 3] * 3)
    with pytest.raises(UserInputError, match="> 0"):
        mwa_weights("loss", [0.0, 1.0], 1.0)


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("papers")
    return make_tiny_llama_family(root, n_experts=3, layers=2, hidden=16, noise=0.05)


def _tensors(folder) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_varm_rule_in_a_linear_merge(fam, tmp_path):
    base, experts = fam
    r = Recipe(
        merge_method="linear",
        base_model=base,
        models=[ModelRef(model=e) for e in experts],
        parameters={"weight": {"rule": "varm"}},
    )
    assert isinstance(r.parameters["weight"], WeightRule)
    resolved = resolve_weight_rules(r, DiskSource())
    assert Recipe.from_yaml(resolved.to_yaml()) == resolved  # plain, round-trippable recipe
    assert "varm" not in to_mergekit_yaml(resolved)
    assert resolve_weight_rules(r, DiskSource()).digest() == resolved.digest()
    run_merge(r, tmp_path / "out")
    out, b = _tensors(tmp_path / "out"), _tensors(base)
    es = [_tensors(e) for e in experts]
    for name in ("model.layers.1.mlp.up_proj.weight", "model.norm.weight"):
        moved = np.array([float((e[name].double() - b[name].double()).square().mean()) for e in es])
        w = moved / moved.sum()
        want = sum(float(wi) * e[name] for wi, e in zip(w, es))  # linear; the base weighs 0
        torch.testing.assert_close(out[name], want, rtol=1e-6, atol=1e-6)


def test_mwa_rule_global_and_per_model(fam, tmp_path):
    base, experts = fam
    glob = Recipe(
        merge_method="task_arithmetic",
        base_model=base,
        models=[ModelRef(model=e) for e in experts],
        parameters={
            "weight": {"rule": "mwa", "metric": "loss", "values": [2.0, 1.0, 1.0], "penalty": 2}
        },
    )
    per = Recipe(
        merge_method="task_arithmetic",
        base_model=base,
        models=[
            ModelRef(
                model=e,
                parameters={"weight": {"rule": "mwa", "metric": "loss", "value": v, "penalty": 2}},
            )
            for e, v in zip(experts, [2.0, 1.0, 1.0])
        ],
    )
    src = DiskSource()
    got = [m.parameters["weight"] for m in resolve_weight_rules(glob, src).models]
    assert got == pytest.approx([1 / 9, 4 / 9, 4 / 9])  # 1/4 : 1 : 1
    assert [m.parameters["weight"] for m in resolve_weight_rules(per, src).models] == got
    mixed = per.model_copy(
        update={"models": [*per.models[:2], ModelRef(model=experts[2], parameters={"weight": 0.3})]}
    )
    with pytest.raises(UserInputError, match="same rule"):
        resolve_weight_rules(mixed, src)
    short = glob.model_copy(
        update={"parameters": {"weight": WeightRule(rule="mwa", metric="loss", values=[1.0])}}
    )
    with pytest.raises(UserInputError, match="1 values for 3"):
        resolve_weight_rules(short, src)
    wrong = glob.model_copy(update={"parameters": {"lambda": WeightRule(rule="varm")}})
    with pytest.raises(UserInputError, match="only compute 'weight'"):
        resolve_weight_rules(wrong, src)


# ---- end to end: every new operator merges a tiny Llama --------------------------------------
@pytest.mark.parametrize(
    "method,params",
    [
        ("pcb", {"density": 0.2}),
        ("tsv", {"rank_fraction": 1.0}),
        ("multislerp", {}),
        ("ties", {"density": 0.5}),
    ],
)
def test_run_merge_with_new_ops(fam, tmp_path, method, params):
    base, experts = fam
    weight = {"rule": "varm"} if method == "ties" else 1.0  # a weight rule inside TIES too
    r = Recipe(
        merge_method=method,
        base_model=base,
        models=[ModelRef(model=e) for e in experts],
        parameters={"weight": weight, **params},
    )
    run_merge(r, tmp_path / "out")
    out, b = _tensors(tmp_path / "out"), _tensors(base)
    es = [_tensors(e) for e in experts]
    assert set(out) == set(b)
    name = "model.layers.0.self_attn.q_proj.weight"
    spec = OPS[method if method != "multislerp" else "multislerp_ta"]
    if method != "ties":
        p = {
            **spec.defaults,
            **params,
            **({"weight": [1.0] * 3} if "weight" in spec.params else {}),
        }
        want = spec.fn([e[name] for e in es], b[name], **p)
        torch.testing.assert_close(out[name], want, rtol=0, atol=1e-6)
    assert not torch.equal(out[name], b[name]) and torch.isfinite(out[name]).all()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    logits = model(torch.tensor([[3, 4, 5]])).logits
    assert torch.isfinite(logits).all()
