"""Data-flow paths over Gemma-3 layers: each output layer keeps the attention its source layer
was trained with (sliding window or global: window, rotary base and mask differ), in the written
config and in the resident model, however the path re-orders or repeats layers."""

from __future__ import annotations

import pytest
import torch

from evomerge.recipe import Recipe, Slice, SliceSource
from evomerge.workers.materialize import ExpertCache, Materializer

S, F = "sliding_attention", "full_attention"
TYPES = [S, S, F, S, S, F]


def _tiny_gemma3(path, seed: int) -> str:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=len(TYPES),
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=4,  # shorter than the test's inputs, so the two kinds differ
        layer_types=TYPES,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # Gemma's norms scale by (1 + w): move them off zero
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5)
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma3")
    return _tiny_gemma3(root / "a", 0), _tiny_gemma3(root / "b", 1)


def _path(hops) -> Recipe:
    return Recipe(
        merge_method="passthrough",
        slices=[Slice(sources=[SliceSource(model=m, layer_range=(i, i + 1))]) for m, i in hops],
    )


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_path_keeps_each_source_layers_attention(pair, tmp_path):
    from transformers import AutoModelForCausalLM

    from evomerge.io.folder import DiskSource
    from evomerge.merge.engine import run_merge

    a, b = pair
    # 8 layers from 6-layer models, global layers moved and repeated
    hops = [(a, 2), (b, 0), (a, 5), (b, 2), (a, 1), (a, 1), (b, 5), (a, 3)]
    want = [TYPES[i] for _, i in hops]
    run_merge(_path(hops), tmp_path / "out", source=DiskSource())
    written = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert written.config.layer_types == want
    assert [layer.self_attn.is_sliding for layer in written.model.layers] == [t == S for t in want]

    mat = Materializer(ExpertCache())
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    resident = mat.materialize(_path([(a, 0), (a, 1)]))  # a short path first: the pool grows
    resident = mat.materialize(_path(hops))
    assert resident.config.layer_types == want
    assert torch.allclose(_logits(resident, ids), _logits(written, ids), atol=1e-5)
    out = resident.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, written.generate(ids, max_new_tokens=4, do_sample=False))

    # and back to a whole model: its own layer kinds again
    whole = mat.materialize(_path([(b, i) for i in range(len(TYPES))]))
    assert whole.config.layer_types == TYPES
    ref = AutoModelForCausalLM.from_pretrained(b).eval()
    assert torch.allclose(_logits(whole, ids), _logits(ref, ids), atol=1e-5)


def test_sliding_and_global_layers_really_differ(pair):
    """Guards the test above: with kinds dealt by position instead, the logits change."""
    from transformers import AutoModelForCausalLM

    a, _ = pair
    model = AutoModelForCausalLM.from_pretrained(a).eval()
    ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(1))
    before = _logits(model, ids)
    model.config.layer_types = [F] * len(TYPES)
    for layer in model.model.layers:
        layer.self_attn.is_sliding, layer.self_attn.sliding_window = False, None
    assert not torch.allclose(before, _logits(model, ids), atol=1e-4)


def test_real_gemma3_path_loads_and_generates(tmp_path):
    """The real Gemma 3 270M (zoo:gemma3/base): a data-flow path that repeats and re-orders its
    layers (global layers included) is written by `merge`, loads with transformers and
    continues a prompt with real words, equal to the same path materialized in place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.io.folder import DiskSource
    from evomerge.merge.engine import run_merge
    from tests.helpers.real_models import gemma3_dir

    src = str(gemma3_dir())
    types = AutoModelForCausalLM.from_pretrained(src).config.layer_types
    hops = [(src, i) for i in [*range(0, 12), 5, *range(12, len(types))]]  # layer 5 twice
    run_merge(_path(hops), tmp_path / "out", source=DiskSource())
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert model.config.layer_types == [types[i] for _, i in hops]
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    text = tok.decode(out[0, ids.shape[1] :])
    assert sum(ch.isalpha() for ch in text) >= 4, text  # words, not padding or garbage ids
    resident = Materializer(ExpertCache()).materialize(_path(hops))
    assert torch.equal(resident.generate(ids, max_new_tokens=6, do_sample=False), out)
