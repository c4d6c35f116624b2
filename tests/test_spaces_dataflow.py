"""Data-flow space: decoding, and the scale-folding equivalence on a real tiny Llama.

The folded recipe (passthrough slices whose o_proj/down_proj are divided by the cumulative input
scale) is merged for real and its logits are compared with a reference forward pass that runs
the same path of layers and multiplies each block's input with a forward pre-hook.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from evomerge.errors import UserInputError
from evomerge.spaces import DataflowSpace, build_space, parse_space_config

L = 3  # layers per tiny model


def _tiny(seed: int, path, eps: float = 1e-9):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=L,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=eps,  # folding is exact up to RMSNorm's eps; keep it negligible here
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(path))
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("dfs")
    a, b = root / "A", root / "B"
    return {"A": _tiny(0, a), "B": _tiny(1, b), "pathA": str(a), "pathB": str(b), "root": root}


def _space(pair, **kw) -> DataflowSpace:
    cfg = parse_space_config({"kind": "dataflow", **kw})
    return build_space(cfg, base=None, models=[pair["pathA"], pair["pathB"]], num_layers=L)


def _reference_logits(pair, hops, ids):
    """A's embeddings/norm/head, the path's layers, each block's input scaled by a pre-hook."""
    ref = copy.deepcopy(pair["A"])
    layers = []
    for k, (p, s) in enumerate(hops):
        src = pair["A"] if p < L else pair["B"]
        layer = copy.deepcopy(src.model.layers[p % L])
        layer.self_attn.layer_idx = k

        def pre(_mod, args, kwargs, s=s):
            if args:
                return (args[0] * s, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * s}

        layer.register_forward_pre_hook(pre, with_kwargs=True)
        layers.append(layer)
    ref.model.layers = torch.nn.ModuleList(layers)
    ref.config.num_hidden_layers = len(layers)
    with torch.no_grad():
        return ref(input_ids=ids, use_cache=False).logits


def _merge(recipe, out) -> torch.nn.Module:
    """Materialize with mergekit (the numerical oracle of the recipe format)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge
    from transformers import LlamaForCausalLM

    cfg = MergeConfiguration.model_validate(recipe.to_dict())
    run_merge(cfg, str(out), MergeOptions(copy_tokenizer=False, lazy_unpickle=False))
    return LlamaForCausalLM.from_pretrained(str(out)).eval()


def test_x0_is_model_a_and_layout(pair):
    s = _space(pair)
    M = 2 * L
    assert (s.M, s.T) == (M, 3 * M)
    assert s.dim == 3 * M + (M + 1) * M
    assert len(s.gene_names()) == s.dim == len(set(s.gene_names()))
    lo, hi = s.bounds
    x0 = s.x0()
    assert np.all(lo <= x0) and np.all(x0 <= hi)
    assert s.path_hops(x0) == [(0, 1.0), (1, 1.0), (2, 1.0)]
    r = s.decode(x0)
    assert r.merge_method == "passthrough"
    assert [src.model for sl in r.slices for src in sl.sources] == [pair["pathA"]] * 3
    assert all(not src.parameters for sl in r.slices for src in sl.sources)


def test_decode_deterministic_and_limits(pair):
    s = _space(pair, max_path_length=4)
    rng = np.random.default_rng(0)
    lo, hi = s.bounds
    for _ in range(5):
        x = rng.uniform(lo, hi)
        assert s.decode(x).digest() == s.decode(x.copy()).digest()
        hops = s.path_hops(x)
        assert 1 <= len(hops) <= 4
        assert all(0.5 <= sc <= 2.0 for _, sc in hops)
    x = s.x0()
    x[: s.T] = -1.0
    x[7] = -0.2  # nothing on: the largest indicator alone
    assert [p for p, _ in s.path_hops(x)] == [7 % s.M]
    x[: s.T] = 0.1
    x[[2, 9]] = 0.9  # too many on: the 4 largest, ties to earlier slots, slot order kept
    assert [p for p, _ in s.path_hops(x)] == [0, 1, 2, 9 % s.M]


def test_scale_genes_map_to_hops(pair):
    s = _space(pair)
    x = s.x0()
    x[L + 1] = 0.7  # slot of B's layer 1 (first copy) on
    w = s.T + (2 + 1) * s.M + (L + 1)  # row: from pool layer 2 (A.L2), column: B.L1
    x[w] = -1.0
    x[s.T + 0] = 0.5  # embedding -> A.L0
    assert s.path_hops(x) == [(0, 2**0.5), (1, 1.0), (2, 1.0), (L + 1, 0.5)]
    per = _space(pair, scales="per_layer")
    assert per.dim == per.T + per.M
    none = _space(pair, scales="none")
    assert none.dim == none.T and all(sc == 1.0 for _, sc in none.path_hops(none.x0()))


def test_bad_input(pair):
    s = _space(pair)
    with pytest.raises(ValueError, match="genes"):
        s.decode(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        s.decode(np.full(s.dim, np.nan))
    with pytest.raises(UserInputError, match="repeats"):
        parse_space_config({"kind": "dataflow", "repeats": 0})
    with pytest.raises(UserInputError, match="unknown key"):
        parse_space_config({"kind": "dataflow", "repeat": 3})


def test_model_a_path_bit_for_bit(pair, tmp_path):
    s = _space(pair)
    merged = _merge(s.decode(s.x0()), tmp_path / "m")
    ref = pair["A"].state_dict()
    got = merged.state_dict()
    assert set(got) == set(ref)
    for name, t in ref.items():
        assert torch.equal(got[name], t), name


def test_folded_scales_equal_hooked_forward(pair, tmp_path):
    s = _space(pair)
    # A0 -> B1 (first copy) -> A1 -> B2 (second) -> A1 -> A2 (third), random scales. The path
    # starts and ends on A so mergekit's "first/last slice supply embeddings/head" agrees with
    # Sakana's "embeddings and head from A".
    slots = [0, L + 1, s.M + 1, s.M + L + 2, 2 * s.M + 1, 2 * s.M + 2]
    rng = np.random.default_rng(3)
    x = s.x0()
    x[: s.T] = -0.5
    x[slots] = 0.5
    x[s.T :] = rng.uniform(-1, 1, s.n_scales)
    hops = s.path_hops(x)
    assert [p for p, _ in hops] == [0, L + 1, 1, L + 2, 1, 2]
    assert any(abs(sc - 1) > 0.1 for _, sc in hops)
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    want = _reference_logits(pair, hops, ids)
    merged = _merge(s.decode(x), tmp_path / "m")
    with torch.no_grad():
        got = merged(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # and the scales matter: unscaled, the same path gives different logits
    unscaled = _reference_logits(pair, [(p, 1.0) for p, _ in hops], ids)
    assert (unscaled - want).abs().max() > 1e-3


def test_hybrid_uses_winner_as_model_a(pair, tmp_path):
    from evomerge.recipe import Recipe

    win = Recipe(merge_method="linear", models=[{"model": pair["pathA"]}, {"model": pair["pathB"]}])
    f = tmp_path / "winner.yaml"
    f.write_text(win.to_yaml())
    cfg = parse_space_config({"kind": "hybrid", "winner": str(f), "partner": 1})
    s = build_space(cfg, base=None, models=[pair["pathA"], pair["pathB"]], num_layers=L)
    assert s.models == [f"recipe:{win.digest()}", pair["pathB"]]
    assert s.winner_recipe == win
    assert {src.model for sl in s.decode(s.x0()).slices for src in sl.sources} == {
        f"recipe:{win.digest()}"
    }
    with pytest.raises(UserInputError, match="partner"):
        build_space(
            parse_space_config({"kind": "hybrid", "winner": "recipe:abc", "partner": 5}),
            base=None,
            models=[pair["pathA"]],
            num_layers=L,
        )


def test_start_path_through_another_model(pair):
    s = _space(pair, start=1)
    assert s.path_hops(s.x0()) == [(L, 1.0), (L + 1, 1.0), (L + 2, 1.0)]  # B's layers 0..L-1
    r = s.decode(s.x0())
    assert r.base_model == pair["pathA"]  # embeddings and head stay model A's
    assert [src.model for sl in r.slices for src in sl.sources] == [pair["pathB"]] * 3
    with pytest.raises(UserInputError, match="space.start"):
        _space(pair, start=2)
