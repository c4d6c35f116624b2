"""mergekit YAML import/export: round trips and clear refusals."""

from __future__ import annotations

import pytest
import yaml

from evomerge.errors import UserInputError
from evomerge.merge.params import evaluate
from evomerge.recipe import FilterRule, ModelRef, Recipe, Slice, SliceSource
from evomerge.recipe_mergekit import from_mergekit_yaml, to_mergekit_yaml

MK = """
merge_method: dare_ties
base_model: /m/base
slices:
  - sources:
      - {model: /m/base, layer_range: [0, 4]}
      - model: /m/a
        layer_range: [0, 4]
        parameters:
          weight: {filter: mlp, value: [0.1, 0.9]}
          density: 0.5
parameters: {int8_mask: true}
dtype: bfloat16
tokenizer_source: base
"""


def test_import_mergekit_slices_gradients_filters() -> None:
    r = from_mergekit_yaml(MK)
    src = r.slices[0].sources[1]
    assert src.parameters["weight"] == [FilterRule(filter="mlp", value=[0.1, 0.9])]
    assert r.dtype == "bfloat16" and r.tokenizer_source == "base"
    back = yaml.safe_load(to_mergekit_yaml(r))
    assert "seed" not in back and back["merge_method"] == "dare_ties"
    assert from_mergekit_yaml(yaml.safe_dump(back)).model_dump(exclude={"seed"}) == r.model_dump(
        exclude={"seed"}
    )
    assert "not bit-identical" in to_mergekit_yaml(r)


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("modules: {}\n", "modules"),
        ("chat_template: chatml\n", "chat_template"),
        ("tokenizer: {source: union}\n", "tokenizer_source or a tokenizer block"),
    ],
)
def test_import_refuses_unsupported(extra: str, needle: str) -> None:
    with pytest.raises(UserInputError, match=needle):
        from_mergekit_yaml(MK + extra)


def test_import_keeps_lora_refs() -> None:
    # mergekit's BASE+ADAPTER is opened when merging (tests/test_lora_inputs.py)
    r = from_mergekit_yaml(
        "merge_method: linear\nmodels: [{model: a+b, parameters: {weight: 1}}]\n"
    )
    assert r.models[0].model == "a+b"


def test_tokenizer_block_round_trip_and_old_digests() -> None:
    """mergekit's tokenizer block imports and exports as written; a recipe without one keeps
    the digest it had before the block existed (no 'tokenizer' key in its preimage)."""
    block = (
        "tokenizer:\n  source: union\n  pad_to_multiple_of: 8\n  tokens:\n"
        "    <t>: {source: {kind: zero}, force: true}\n"
        "    <u>: {source: {kind: model_token, model: /m/a, token_id: 3}}\n"
    )
    r = from_mergekit_yaml(MK.replace("tokenizer_source: base\n", block))
    assert r.tokenizer_config().pad_to_multiple_of == 8
    assert r.tokenizer.tokens["<t>"].force
    back = yaml.safe_load(to_mergekit_yaml(r))
    assert back["tokenizer"]["tokens"]["<u>"]["source"]["token_id"] == 3
    assert from_mergekit_yaml(yaml.safe_dump(back)).tokenizer == r.tokenizer
    plain = from_mergekit_yaml(MK)
    assert '"tokenizer"' not in plain.canonical_json()
    assert plain.tokenizer_config().source == "base"
    with pytest.raises(UserInputError, match="token_id or token"):
        from_mergekit_yaml(MK.replace("tokenizer_source: base\n", block.replace("token_id: 3", "")))


def test_export_refuses_inexpressible() -> None:
    cons = Recipe(merge_method="consensus", base_model="b", models=[ModelRef(model="a")])
    with pytest.raises(UserInputError, match="no mergekit equivalent"):
        to_mergekit_yaml(cons)
    ref = Recipe(merge_method="linear", models=[ModelRef(model="recipe:" + "0" * 64)])
    with pytest.raises(UserInputError, match="recipe:0"):
        to_mergekit_yaml(ref)
    path = Recipe(
        merge_method="passthrough",
        base_model="A",
        slices=[
            Slice(sources=[SliceSource(model="A", layer_range=(0, 1))]),
            Slice(sources=[SliceSource(model="B", layer_range=(0, 1))]),
        ],
    )
    with pytest.raises(UserInputError, match="base_model"):
        to_mergekit_yaml(path)


def test_gradient_and_filter_evaluation_matches_mergekit() -> None:
    from mergekit.config import ConditionalParameter, evaluate_setting

    settings = [[0.0, 1.0, 0.25], 0.3, [{"filter": "mlp", "value": [1, 2]}, {"value": 5}]]
    for s in settings:
        mk_s = (
            [ConditionalParameter(**x) for x in s]
            if isinstance(s, list) and isinstance(s[0], dict)
            else s
        )
        for name in ("model.layers.0.mlp.up_proj.weight", "model.norm.weight"):
            for t in (0.0, 0.2, 0.5, 0.77, 1.0):
                assert evaluate(s, name, t) == pytest.approx(
                    evaluate_setting(name, mk_s, t, validate=float)
                )


def test_export_refuses_an_unresolved_weight_rule() -> None:
    from evomerge.recipe import WeightRule

    r = Recipe(
        merge_method="linear",
        models=[
            ModelRef(model="/m/a", parameters={"weight": WeightRule(rule="varm")}),
            ModelRef(model="/m/b", parameters={"weight": WeightRule(rule="varm")}),
        ],
        base_model="/m/base",
    )
    with pytest.raises(UserInputError, match="weight rules"):
        to_mergekit_yaml(r)
