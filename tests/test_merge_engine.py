"""Engine behaviour beyond mergekit parity: tied embeddings, shards, dtypes, reproducible random
masks, the in-memory source, evomerge's base_model rule for layer stacks, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from evomerge.merge.engine import iter_merged_tensors, plan, run_merge
from evomerge.recipe import ModelRef, Recipe, Slice, SliceSource
from evomerge.workers.materialize import ExpertCache
from tests.helpers.tiny_models import make_tiny_llama_family


@pytest.fixture(scope="module")
def fam(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    return make_tiny_llama_family(tmp_path_factory.mktemp("fam"), n_experts=2, layers=4, hidden=32)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _dare(base: str, experts: list[str], seed: int = 7) -> Recipe:
    return Recipe(
        merge_method="dare_ties",
        base_model=base,
        models=[ModelRef(model=e, parameters={"weight": 0.5, "density": 0.5}) for e in experts],
        seed=seed,
    )


def test_dare_ties_bits_reproducible_and_order_free(fam, tmp_path: Path) -> None:
    base, experts = fam
    run_merge(_dare(base, experts), tmp_path / "a")
    run_merge(_dare(base, experts), tmp_path / "b")
    a, b = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Reversed tensor order and the in-memory cache: the same bits (masks keyed by tensor name).
    p = plan(_dare(base, experts), source=ExpertCache())
    p.tasks.reverse()
    mem = dict(iter_merged_tensors(p, ExpertCache()))
    assert all(torch.equal(mem[k], a[k]) for k in a)
    run_merge(_dare(base, experts, seed=8), tmp_path / "c")
    c = _tensors(tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a if "layers" in k)


def test_tied_embeddings(tmp_path: Path) -> None:
    base, experts = make_tiny_llama_family(tmp_path / "tied", n_experts=2, tie_embeddings=True)
    assert "lm_head.weight" not in _tensors(Path(base))
    r = Recipe(
        merge_method="ties",
        base_model=base,
        models=[ModelRef(model=e, parameters={"weight": 0.5}) for e in experts],
    )
    run_merge(r, tmp_path / "out")
    out = _tensors(tmp_path / "out")
    assert "lm_head.weight" not in out and "model.embed_tokens.weight" in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True


def test_sharded_in_and_out(tmp_path: Path) -> None:
    base, experts = make_tiny_llama_family(tmp_path / "sh", n_experts=1, max_shard_size="20KB")
    assert (Path(base) / "model.safetensors.index.json").is_file()
    r = Recipe(
        merge_method="linear",
        models=[ModelRef(model=m, parameters={"weight": 1.0}) for m in [base, *experts]],
    )
    s = run_merge(r, tmp_path / "out", max_shard_bytes=30_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert s.shards > 1 and len(set(index["weight_map"].values())) == s.shards
    out, a, b = _tensors(tmp_path / "out"), _tensors(Path(base)), _tensors(Path(experts[0]))
    assert set(index["weight_map"]) == set(out) == set(a)
    for k in a:
        torch.testing.assert_close(out[k], (a[k] + b[k]) / 2)


def test_out_dtype_digest_recipe_tokenizer(fam, tmp_path: Path) -> None:
    base, experts = fam
    r = Recipe(
        merge_method="task_arithmetic",
        base_model=base,
        models=[ModelRef(model=experts[0], parameters={"weight": 0.5})],
        out_dtype="bfloat16",
    )
    run_merge(r, tmp_path / "out")
    f = tmp_path / "out" / "model.safetensors"
    with safe_open(str(f), "pt") as h:
        assert h.metadata()["evomerge_recipe_digest"] == r.digest()
        assert h.get_tensor("model.norm.weight").dtype == torch.bfloat16
    assert Recipe.load(tmp_path / "out" / "recipe.yaml") == r
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_passthrough_non_layer_tensors_from_base(fam, tmp_path: Path) -> None:
    """evomerge's rule: with base_model, a layer stack's embeddings/norm/head are the base's
    even when the path ends on another model (mergekit would take the last slice's)."""
    base, experts = fam
    scale = [{"filter": "o_proj", "value": 0.5}, {"value": 1.0}]
    r = Recipe(
        merge_method="passthrough",
        base_model=base,
        slices=[
            Slice(sources=[SliceSource(model=base, layer_range=(0, 2))]),
            Slice(
                sources=[
                    SliceSource(model=experts[0], layer_range=(1, 2), parameters={"scale": scale})
                ]
            ),
        ],
    )
    run_merge(r, tmp_path / "out")
    out, b, e = _tensors(tmp_path / "out"), _tensors(Path(base)), _tensors(Path(experts[0]))
    assert torch.equal(out["model.norm.weight"], b["model.norm.weight"])
    assert torch.equal(out["lm_head.weight"], b["lm_head.weight"])
    torch.testing.assert_close(
        out["model.layers.2.self_attn.o_proj.weight"],
        0.5 * e["model.layers.1.self_attn.o_proj.weight"],
    )
    assert torch.equal(
        out["model.layers.2.mlp.up_proj.weight"], e["model.layers.1.mlp.up_proj.weight"]
    )
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 3


def test_recipe_refs_through_resolver(fam, tmp_path: Path) -> None:
    base, experts = fam
    ref = "recipe:" + "ab" * 32
    r = Recipe(merge_method="linear", models=[ModelRef(model=ref, parameters={"weight": 1.0})])
    run_merge(r, tmp_path / "out", resolver=lambda x: experts[0] if x == ref else x)
    out, e = _tensors(tmp_path / "out"), _tensors(Path(experts[0]))
    assert all(torch.equal(out[k], e[k]) for k in e)


def test_merged_model_loads_and_generates(fam, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, experts = fam
    r = Recipe(
        merge_method="ties",
        base_model=base,
        models=[ModelRef(model=e, parameters={"weight": 0.5, "density": 0.5}) for e in experts],
    )
    run_merge(r, tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    ids = tok("w3 w4 w5", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, ids.shape[1] + 4)
    sd = model.state_dict()
    assert torch.equal(
        sd["model.layers.0.mlp.up_proj.weight"],
        _tensors(tmp_path / "out")["model.layers.0.mlp.up_proj.weight"],
    )
