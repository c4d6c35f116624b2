"""In-place materialization: one resident model, tensors copied into its parameters, the decoder
stack resized in place for data-flow paths, outputs equal to loading the same weights."""

from __future__ import annotations

import json

import pytest
import torch

from evomerge.recipe import ModelRef, Recipe, Slice, SliceSource
from evomerge.workers.materialize import ExpertCache, Materializer


def _tiny(path, seed, layers=4):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return [_tiny(root / name, seed) for seed, name in enumerate(["a", "b"])]


def _stack_merge(recipe, cache):
    """Stand-in for the engine's passthrough: one model as is, or a stack of 1-layer slices."""
    from transformers import AutoConfig

    if recipe.models:
        ref = recipe.models[0].model
        return AutoConfig.from_pretrained(cache.resolver(ref)), cache.tensors(ref).items()
    first = recipe.slices[0].sources[0].model
    cfg = AutoConfig.from_pretrained(cache.resolver(first))
    cfg.num_hidden_layers = len(recipe.slices)
    out = {n: t for n, t in cache.tensors(first).items() if ".layers." not in n}
    for i, sl in enumerate(recipe.slices):
        src = sl.sources[0]
        prefix = f"model.layers.{src.layer_range[0]}."
        for n, t in cache.tensors(src.model).items():
            if n.startswith(prefix):
                out[f"model.layers.{i}." + n[len(prefix) :]] = t
    return cfg, out.items()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _reference(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _path_recipe(hops):
    return Recipe(
        merge_method="passthrough",
        slices=[
            Slice(sources=[SliceSource(model=m, layer_range=(layer, layer + 1))])
            for m, layer in hops
        ],
    )


def test_in_place_matches_loading_and_keeps_one_model(experts):
    a, b = experts
    mat = Materializer(ExpertCache(), merge_fn=_stack_merge)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    m1 = mat.materialize(Recipe(merge_method="passthrough", models=[ModelRef(model=a)]))
    assert torch.equal(_logits(m1, ids), _logits(_reference(a), ids))
    m2 = mat.materialize(Recipe(merge_method="passthrough", models=[ModelRef(model=b)]))
    assert m2 is m1  # same resident object, new weights
    assert torch.equal(_logits(m2, ids), _logits(_reference(b), ids))


def test_resize_for_data_flow_paths_and_back(experts, tmp_path):
    from transformers import AutoModelForCausalLM

    a, b = experts
    mat = Materializer(ExpertCache(), merge_fn=_stack_merge)
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(1))
    hops = [(a, 0), (b, 3), (a, 1), (a, 1), (b, 2), (a, 3)]  # 6 layers: grows the pool
    model = mat.materialize(_path_recipe(hops))
    assert len(model.model.layers) == 6 and model.config.num_hidden_layers == 6
    cfg, tensors = _stack_merge(_path_recipe(hops), mat.cache)
    ref = AutoModelForCausalLM.from_config(cfg).eval()
    ref.load_state_dict(dict(tensors))
    assert torch.equal(_logits(model, ids), _logits(ref, ids))
    # generation uses the KV cache, indexed by each layer's position in the stack
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, ref.generate(ids, max_new_tokens=4, do_sample=False))
    small = mat.materialize(_path_recipe([(b, 1), (a, 2)]))
    assert small is model and len(small.model.layers) == 2
    back = mat.materialize(Recipe(merge_method="passthrough", models=[ModelRef(model=a)]))
    assert torch.equal(_logits(back, ids), _logits(_reference(a), ids))


def test_missing_or_misshapen_tensor_is_an_error(experts):
    a, _ = experts
    cache = ExpertCache()

    def drop_one(recipe, c):
        cfg, items = _stack_merge(recipe, c)
        return cfg, [(n, t) for n, t in items if n != "model.norm.weight"]

    def bad_shape(recipe, c):
        cfg, items = _stack_merge(recipe, c)
        return cfg, [(n, t[:1] if n == "model.norm.weight" else t) for n, t in items]

    recipe = Recipe(merge_method="passthrough", models=[ModelRef(model=a)])
    with pytest.raises(ValueError, match="no value for"):
        Materializer(cache, merge_fn=drop_one).materialize(recipe)
    with pytest.raises(ValueError, match="shape"):
        Materializer(cache, merge_fn=bad_shape).materialize(recipe)


def test_expert_cache_loads_once_and_caches_task_vectors(experts, tmp_path):
    a, b = experts
    cache = ExpertCache()
    t1 = cache.tensors(a)
    assert cache.tensors(a) is t1
    name = "model.layers.0.mlp.down_proj.weight"
    tv = cache.task_vector(b, a, name)
    assert torch.equal(tv, cache.tensor(b, name) - cache.tensor(a, name))
    assert cache.task_vector(b, a, name) is tv
    assert cache.nbytes == sum(t.numel() * 4 for t in t1.values()) * 2
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({}))
    from evomerge.errors import UserInputError

    with pytest.raises(UserInputError, match="safetensors"):
        cache.tensors(str(tmp_path / "empty"))
