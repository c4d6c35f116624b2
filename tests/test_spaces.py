"""Parameter space: gene layout, bounds, x0, transforms, decode to recipes mergekit executes;
space configs and the presets loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from evomerge.errors import UserInputError
from evomerge.recipe import Recipe
from evomerge.spaces import (
    ParameterSpace,
    available_presets,
    build_space,
    layer_group_ranges,
    load_space_preset,
    parse_space_config,
)
from evomerge.spaces.opinfo import OpInfo
from tests.test_spaces_dataflow import _tiny

L = 3
# The operators as mergekit defines them (the recipe format's reference semantics).
DARE_TIES = OpInfo(
    name="dare_ties",
    per_model_params=("weight", "density"),
    global_params=("normalize", "int8_mask", "lambda"),
    defaults={"weight": 1.0, "density": 1.0, "normalize": True, "int8_mask": False, "lambda": 1.0},
    param_bounds={"weight": (-1.0, 1.0), "density": (0.0, 1.0)},
    needs_base=True,
)
LINEAR = OpInfo(
    name="linear",
    per_model_params=("weight",),
    global_params=("normalize",),
    defaults={"weight": 1.0, "normalize": True},
)
SLERP = OpInfo(name="slerp", per_model_params=(), global_params=("t",), needs_base=True)


def _space(op: OpInfo, models=("/m/a", "/m/b"), base="/m/base", n=L, **kw) -> ParameterSpace:
    cfg = parse_space_config({"kind": "parameter", "merge_method": op.name, **kw})
    return ParameterSpace(cfg, base=base, models=list(models), num_layers=n, op=op)


def test_layer_groups_split():
    assert layer_group_ranges(10, 1) == [(0, 10)]
    assert layer_group_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert layer_group_ranges(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(UserInputError, match="layer_groups = 5"):
        layer_group_ranges(4, 5)


def test_sakana_ps_one_pair_per_model():
    s = _space(DARE_TIES, params=["weight", "density"], bounds={"weight": [0, 1]})
    assert s.dim == 4
    assert s.gene_names() == [
        "m0:a/all/*/weight",
        "m0:a/all/*/density",
        "m1:b/all/*/weight",
        "m1:b/all/*/density",
    ]
    lo, hi = s.bounds
    assert np.all(lo == 0) and np.all(hi == 1)
    assert np.all(s.x0() == 0.5)
    r = s.decode(np.array([0.1, 0.2, 0.9, 1.0]))
    assert r.base_model == "/m/base"
    assert [m.model for m in r.models] == ["/m/a", "/m/b", "/m/base"]
    assert r.models[0].parameters == {"weight": pytest.approx(0.1), "density": pytest.approx(0.2)}
    assert r.models[1].parameters == {"weight": pytest.approx(0.9), "density": 1.0}
    assert r.models[2].parameters == {}


def test_transforms_bounds_and_x0():
    s = _space(
        DARE_TIES,
        global_params=["lambda"],
        bounds={"lambda": [0.25, 4.0]},
        log_scale=["lambda"],
        x0={"density": 0.8},
    )
    names = s.gene_names()
    x0 = s.x0()
    vals = s.values(x0)
    assert vals[names.index("m0:a/all/*/density")] == pytest.approx(0.8)
    assert vals[names.index("m0:a/all/*/weight")] == pytest.approx(0.0)  # op bounds [-1, 1]
    assert vals[names.index("global/all/*/lambda")] == pytest.approx(1.0)  # log mid of [1/4, 4]
    x = x0.copy()
    x[names.index("global/all/*/lambda")] = 1.0
    assert s.decode(x).parameters["lambda"] == pytest.approx(4.0)
    x[0] = 1.7  # outside the box: clipped, never extrapolated
    assert s.values(x)[0] == pytest.approx(1.0)
    with pytest.raises(UserInputError, match="x0.density"):
        _space(DARE_TIES, x0={"density": 2.0}).x0()
    with pytest.raises(UserInputError, match="log_scale"):
        _space(DARE_TIES, log_scale=["density"])


def test_piecewise_groups_filters_decode_to_slices():
    s = _space(
        DARE_TIES,
        layer_groups=2,
        filters=["self_attn"],
        params=["density"],
        global_params=["lambda"],
        fixed={"normalize": False},
    )
    assert s.dim == 2 * 2 * (2 + 1)
    assert s.gene_names()[:3] == [
        "m0:a/layers.0-0/self_attn/density",
        "m1:b/layers.0-0/self_attn/density",
        "global/layers.0-0/self_attn/lambda",
    ]
    r = s.decode(np.linspace(0, 1, s.dim))
    assert r.models is None and len(r.slices) == 2
    assert [src.layer_range for src in r.slices[1].sources] == [(1, 3)] * 3
    assert r.slices[1].sources[2].model == "/m/base"
    rules = r.slices[0].sources[0].parameters["density"]
    assert [rule.filter for rule in rules] == ["self_attn", None]
    assert r.parameters == {"normalize": False}
    assert [rule.filter for rule in r.slices[0].parameters["lambda"]] == ["self_attn", None]


def test_smooth_emits_gradients():
    s = _space(LINEAR, base=None, layer_groups=3, smooth=True)
    assert s.gene_names() == [
        f"m{i}:{n}/cp{g}/*/weight" for g in range(3) for i, n in enumerate("ab")
    ]
    r = s.decode(np.array([0.0, 1.0, 0.5, 0.5, 1.0, 0.0]))
    assert r.base_model is None and [m.model for m in r.models] == ["/m/a", "/m/b"]
    assert r.models[0].parameters["weight"] == [0.0, 0.5, 1.0]
    with pytest.raises(UserInputError, match="smooth: true needs layer_groups >= 2"):
        _space(LINEAR, base=None, smooth=True)


def test_decode_deterministic_and_checks():
    s = _space(DARE_TIES, layer_groups=3, filters=["mlp"])
    x = np.random.default_rng(0).uniform(0, 1, s.dim)
    assert s.decode(x).digest() == s.decode(x.copy()).digest()
    assert s.decode(x).digest() != s.decode(np.clip(x + 0.01, 0, 1)).digest()
    assert len(set(s.gene_names())) == s.dim
    with pytest.raises(ValueError, match="genes"):
        s.decode(x[:-1])
    with pytest.raises(ValueError, match="NaN"):
        s.decode(np.full(s.dim, np.nan))


def test_user_errors():
    with pytest.raises(UserInputError, match="needs a base model"):
        _space(DARE_TIES, base=None)
    with pytest.raises(UserInputError, match="params: 'lambda'"):
        _space(DARE_TIES, params=["lambda"])
    with pytest.raises(UserInputError, match="global_params: 'weight'"):
        _space(DARE_TIES, global_params=["weight"])
    with pytest.raises(UserInputError, match="fixed: 'rescale'"):
        _space(DARE_TIES, fixed={"rescale": True})
    with pytest.raises(UserInputError, match="unknown key 'layer_group'"):
        parse_space_config({"kind": "parameter", "layer_group": 2})
    with pytest.raises(UserInputError, match="'kind' is 'params'"):
        parse_space_config({"kind": "params"})
    with pytest.raises(UserInputError, match="no genes"):
        _space(SLERP, models=["/m/a", "/m/base"])
    with pytest.raises(UserInputError, match=r"counts \(/m/a: 4, /m/b: 6\); .* fine-tunes"):
        cfg = parse_space_config({"kind": "parameter", "merge_method": "dare_ties"})
        build_space(cfg, base="/m/base", models=["/m/a", "/m/b"], num_layers=(4, 6))


# ---- real merges: the decoded recipes are valid and mean what the genes say ------------------
@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("ps")
    for i, n in enumerate(["base", "a", "b"]):
        _tiny(10 + i, root / n, eps=1e-6)
    return {n: str(root / n) for n in ["base", "a", "b"]} | {"root": root}


def _mergekit(recipe: Recipe, out) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(
        MergeConfiguration.model_validate(recipe.to_dict()),
        str(out),
        MergeOptions(copy_tokenizer=False, lazy_unpickle=False),
    )
    return load_file(str(out / "model.safetensors"))


def test_linear_layer_groups_merge(trio, tmp_path):
    s = _space(
        LINEAR,
        models=[trio["a"], trio["b"]],
        base=None,
        layer_groups=3,
        filters=["mlp"],
        fixed={"normalize": False},
    )
    x = np.random.default_rng(1).uniform(0, 1, s.dim)
    out = _mergekit(s.decode(x), tmp_path / "m")
    a = load_file(f"{trio['a']}/model.safetensors")
    b = load_file(f"{trio['b']}/model.safetensors")
    v = dict(zip(s.gene_names(), s.values(x), strict=True))
    for layer in range(L):
        for t, f in [("mlp.up_proj", "mlp"), ("self_attn.q_proj", "*")]:
            name = f"model.layers.{layer}.{t}.weight"
            wa, wb = (
                v[f"m0:a/layers.{layer}-{layer}/{f}/weight"],
                v[f"m1:b/layers.{layer}-{layer}/{f}/weight"],
            )
            torch.testing.assert_close(out[name], wa * a[name] + wb * b[name])


def test_sakana_dare_ties_merges(trio, tmp_path):
    s = _space(
        DARE_TIES,
        models=[trio["a"], trio["b"]],
        base=trio["base"],
        bounds={"weight": [0, 1]},
        fixed={"normalize": False},
    )
    x = s.x0()
    x[1] = x[3] = 1.0  # density 1: no DARE drop, so TIES arithmetic is deterministic
    out = _mergekit(s.decode(x), tmp_path / "m")
    base, a, b = (load_file(f"{trio[n]}/model.safetensors") for n in ("base", "a", "b"))
    name = "model.layers.1.mlp.down_proj.weight"
    # weight genes at 0.5 -> 0.5; TIES sign consensus over the weighted task vectors
    deltas = torch.stack([0.5 * (a[name] - base[name]), 0.5 * (b[name] - base[name])])
    agree = torch.sign(deltas) == torch.sign(deltas.sum(0))
    torch.testing.assert_close(out[name], base[name] + (deltas * agree).sum(0))


# ---- presets ------------------------------------------------------------------------------------
def test_presets_all_load():
    names = available_presets()
    for n in ["ps_dare_ties", "ps_ties_layerwise", "ps_linear", "ps_slerp", "dfs_sakana", "hybrid"]:
        assert n in names
        cfg = load_space_preset(n)
        assert cfg.kind in ("parameter", "dataflow", "hybrid")
    assert load_space_preset("ps_dare_ties.yaml").merge_method == "dare_ties"
    over = load_space_preset("ps_dare_ties", {"layer_groups": 4})
    assert over.layer_groups == 4


def test_preset_paths_and_errors(tmp_path, monkeypatch):
    f = tmp_path / "mine.yaml"
    f.write_text("kind: dataflow\nrepeats: 2\n")
    assert load_space_preset(str(f)).repeats == 2
    assert load_space_preset("mine", extra_dirs=[tmp_path]).repeats == 2
    monkeypatch.setenv("EVOMERGE_SEARCH_SPACES", str(tmp_path))
    assert load_space_preset("mine").repeats == 2
    with pytest.raises(UserInputError, match="unknown search space preset 'nope'.*ps_dare_ties"):
        load_space_preset("nope")
    with pytest.raises(UserInputError, match="not found"):
        load_space_preset(str(tmp_path / "absent.yaml"))
    # an experiment in the lookup folder named like the preset it asks for is not that preset
    (tmp_path / "hybrid.yaml").write_text("name: x\nspace: {preset: hybrid}\n")
    assert load_space_preset("hybrid", extra_dirs=[tmp_path]).kind == "hybrid"
    typo = tmp_path / "typo.yaml"  # a preset with a wrong kind is still found, and refused
    typo.write_text("kind: paramter\n")
    with pytest.raises(UserInputError, match="'kind' is 'paramter'"):
        load_space_preset("typo", extra_dirs=[tmp_path])
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: dataflow\nrepeats: -1\n")
    with pytest.raises(UserInputError, match=r"bad.yaml: field 'repeats'"):
        load_space_preset(str(bad))


# ---- every registered operator gets a working parameter space --------------------------------
def _registry() -> dict:
    import evomerge.merge.ops as ops

    reg = getattr(ops, "OPS", None) or getattr(ops, "REGISTRY", None)
    if not reg:
        pytest.fail("evomerge.merge.ops exposes no operator registry (OPS or REGISTRY)")
    return reg


def test_every_registered_op_has_a_parameter_space():
    from evomerge.spaces.opinfo import op_info

    for name in sorted(_registry()):
        op = op_info(name)
        glob = op.searchable(op.global_params)
        if name == "passthrough" or not (glob or op.searchable(op.per_model_params)):
            continue  # nothing to weigh (data flow's passthrough, model_stock's closed form)
        models = ["/m/a"] if name == "slerp" else ["/m/a", "/m/b"]
        cfg = {"kind": "parameter", "merge_method": name, "global_params": glob, "layer_groups": 2}
        if op.needs_activations:  # AIM: the recipes must name their calibration text
            cfg["calibration"] = {"file": "calibration.txt"}
        s = ParameterSpace(parse_space_config(cfg), base="/m/base", models=models, num_layers=L)
        assert s.dim == len(s.gene_names()) > 0, name
        for x in (s.x0(), np.random.default_rng(0).uniform(0, 1, s.dim)):
            r = s.decode(x)
            assert r.merge_method == name and Recipe.from_yaml(r.to_yaml()) == r


def test_slerp_preset_merges_and_t0_is_base(trio, tmp_path):
    cfg = load_space_preset("ps_slerp")
    s = ParameterSpace(cfg, base=trio["base"], models=[trio["a"]], num_layers=L, op=SLERP)
    assert s.dim == 5 * 3  # 5 control points x (self_attn, mlp, catch-all)
    r = s.decode(np.zeros(s.dim))
    assert [rule.filter for rule in r.parameters["t"]] == ["self_attn", "mlp", None]
    assert r.parameters["t"][0].value == [0.0] * 5
    out = _mergekit(r, tmp_path / "m")
    base = load_file(f"{trio['base']}/model.safetensors")
    for name, t in base.items():
        torch.testing.assert_close(out[name], t)
