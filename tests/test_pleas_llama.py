"""PLeaS for Llama (evomerge/model_merges/llama.py): on a tiny random Llama and a copy of it with
its residual channels, heads and MLP units shuffled, matching finds the shuffles and every merge
gives the model back; the merged folder loads with transformers."""

from __future__ import annotations

import random

import pytest
import torch

from evomerge.errors import UserInputError
from evomerge.model_merges import llama as pleas_llama
from evomerge.zoo.tokenizer import CHARS, build_tokenizer

LAYERS, HIDDEN, INTER, HEADS = 2, 16, 24, 4
HEAD_DIM = HIDDEN // HEADS


def _tiny_llama(seed: int, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {
        "vocab_size": len(build_tokenizer()),
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": 32,
        "tie_word_embeddings": False,
    }
    cfg = LlamaConfig(**{**shape, **overrides})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger than the init's 0.02: distinct units, not all alike
        for name, p in model.named_parameters():
            p.copy_(
                1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p)
            )
    return model


def _shuffle(w: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None):
    """B[rows[i], cols[j]] = A[i, j]: B's unit rows[i] is A's unit i."""
    out = w.clone()
    if rows is not None:
        out[rows] = w.clone()
    if cols is not None:
        out2 = out.clone()
        out2[:, cols] = out
        out = out2
    return out


def _permuted_copy(model, resid, heads, mlp):
    """The same function, its residual channels, heads and MLP units renamed."""
    b = _tiny_llama(0)
    sa = model.state_dict()
    new = {}
    for key, w in sa.items():
        layer = int(key.split(".")[2]) if ".layers." in key else None
        dims = (
            None
            if layer is None
            else (heads[layer].unsqueeze(1) * HEAD_DIM + torch.arange(HEAD_DIM)).reshape(-1)
        )
        if key == "model.embed_tokens.weight":
            new[key] = _shuffle(w, None, resid)
        elif key == "lm_head.weight":
            new[key] = _shuffle(w, None, resid)
        elif "norm" in key:
            new[key] = _shuffle(w.unsqueeze(1), resid, None).squeeze(1)
        elif any(n in key for n in ("q_proj", "k_proj", "v_proj")):
            new[key] = _shuffle(w, dims, resid)
        elif "o_proj" in key:
            new[key] = _shuffle(w, resid, dims)
        elif "gate_proj" in key or "up_proj" in key:
            new[key] = _shuffle(w, mlp[layer], resid)
        else:  # down_proj
            new[key] = _shuffle(w, resid, mlp[layer])
    b.load_state_dict(new)
    return b.eval()


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    letters = CHARS[10:]
    return ["".join(rng.choice(letters) for _ in range(rng.randint(5, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def twins():
    g = torch.Generator().manual_seed(1)
    a = _tiny_llama(3)
    resid = torch.randperm(HIDDEN, generator=g)
    heads = [torch.randperm(HEADS, generator=g) for _ in range(LAYERS)]
    mlp = [torch.randperm(INTER, generator=g) for _ in range(LAYERS)]
    b = _permuted_copy(a, resid, heads, mlp)
    return a, b, (resid, heads, mlp), build_tokenizer()


def _logits(model, tok, texts):
    ids = [torch.tensor([tok.encode(t, add_special_tokens=False)]) for t in texts]
    with torch.no_grad():
        return torch.cat([model(input_ids=i).logits[0] for i in ids])


def test_the_shuffled_copy_is_the_same_function(twins) -> None:
    a, b, _, tok = twins
    texts = _texts(4, seed=9)
    torch.testing.assert_close(_logits(b, tok, texts), _logits(a, tok, texts), atol=1e-4, rtol=1e-4)


def test_matching_recovers_every_shuffle(twins) -> None:
    a, b, (resid, heads, mlp), tok = twins
    _, plan = pleas_llama.merge_llama(a, b, _texts(60, seed=0), tok, size=1.0, method="permute")
    assert torch.equal(plan.resid.b_merged, resid)
    for layer in range(LAYERS):
        dims = (heads[layer].unsqueeze(1) * HEAD_DIM + torch.arange(HEAD_DIM)).reshape(-1)
        assert torch.equal(plan.heads[layer].b_merged, dims)
        assert torch.equal(plan.mlp[layer].b_merged, mlp[layer])


@pytest.mark.parametrize(("method", "size"), [("permute", 1.0), ("pleas", 1.0), ("pleas", 1.5)])
def test_merging_the_shuffled_copy_gives_the_model_back(twins, method, size, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    a, b, _, tok = twins
    merged, plan = pleas_llama.merge_llama(a, b, _texts(60, seed=0), tok, size=size, method=method)
    assert merged.config.intermediate_size == round(INTER * size) == plan.mlp[0].width
    fresh = _texts(6, seed=5)  # texts the merge never saw
    torch.testing.assert_close(
        _logits(merged, tok, fresh), _logits(a, tok, fresh), atol=2e-3, rtol=1e-3
    )
    merged.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.intermediate_size == round(INTER * size)
    torch.testing.assert_close(_logits(loaded, tok, fresh), _logits(merged, tok, fresh))


def test_plain_average_of_the_shuffled_copy_is_not_the_model(twins) -> None:
    a, b, _, tok = twins
    merged, _ = pleas_llama.merge_llama(a, b, [], tok, method="average")
    texts = _texts(6, seed=5)
    assert (_logits(merged, tok, texts) - _logits(a, tok, texts)).abs().max() > 0.5


def test_refusals_name_the_flag(twins) -> None:
    a, b, _, tok = twins
    with pytest.raises(UserInputError, match=r"size: 2.5 is outside \[1, 2\]"):
        pleas_llama.merge_llama(a, b, [], tok, size=2.5)
    with pytest.raises(UserInputError, match="--size: plain averaging gives one model's width"):
        pleas_llama.merge_llama(a, b, ["ab"], tok, size=1.5, method="average")
    with pytest.raises(UserInputError, match="--model-b: .*grouped-query attention"):
        pleas_llama.merge_llama(a, _tiny_llama(0, num_key_value_heads=2), [], tok)
    with pytest.raises(UserInputError, match="--model-b: .*tensor shapes differ"):
        pleas_llama.merge_llama(a, _tiny_llama(0, intermediate_size=20), [], tok)
