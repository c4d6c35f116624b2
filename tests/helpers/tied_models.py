"""Tiny tied-embedding Llama families (``tie_word_embeddings: true``, no ``lm_head.weight`` on
disk, as Qwen2 / Llama-3.2 / SmolLM2 checkpoints are), with the lm-skills zoo's real tokenizer.

Experts are fine-tune-like: base + small rank-2 changes of a few projections and of the
embedding (so the merged embedding, which is also the head, differs from every input)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

LOW_RANK_TARGETS = ("q_proj", "v_proj", "down_proj", "embed_tokens")


def zoo_tokenizer_folder() -> Path:
    """The lm-skills base folder (built once per cache; the cache is prebuilt in CI)."""
    from evomerge.zoo.build import build

    return build("lm-skills", progress=False) / "base"


def copy_tokenizer(src: Path, dst: Path) -> None:
    from evomerge.io.folder import ModelFolder

    for f in ModelFolder(src).tokenizer_files():
        shutil.copy(f, dst / f.name)


def tied_config(vocab: int, layers: int = 3, hidden: int = 32, tie: bool = True):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=None,
    )


def low_rank_delta(
    state: dict[str, torch.Tensor], seed: int, targets=LOW_RANK_TARGETS, rank: int = 2
) -> dict[str, torch.Tensor]:
    """A rank-``rank`` change of each 2-D tensor whose name holds one of ``targets``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if t.dim() == 2 and any(k in name for k in targets):
            u = torch.randn(t.shape[0], rank, generator=g)
            v = torch.randn(rank, t.shape[1], generator=g)
            out[name] = (0.3 / rank) * (u @ v) * t.std()
    return out


def save(model, folder: Path, tokenizer_from: Path) -> str:
    model.save_pretrained(str(folder), safe_serialization=True)
    copy_tokenizer(tokenizer_from, folder)
    return str(folder)


def make_tied_family(root: Path, n_experts: int = 3, layers: int = 3, seed: int = 0) -> dict:
    """{"base", "experts": [...], "untied"}: tied base and experts; ``untied`` is the first
    expert with its own head (embedding + a further low-rank change) and a config that says so."""
    from transformers import LlamaForCausalLM

    tok = zoo_tokenizer_folder()
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tok)))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tied_config(vocab, layers)).eval()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    out = {"base": save(model, root / "base", tok), "experts": []}
    for i in range(n_experts):
        delta = low_rank_delta(base_state, seed * 100 + i + 1)
        with torch.no_grad():  # (named_parameters: the tied head is not a second copy)
            for name, p in model.named_parameters():
                p.copy_(base_state[name] + delta.get(name, 0))
        out["experts"].append(save(model, root / f"expert{i}", tok))
    out["untied"] = _untied_copy(Path(out["experts"][0]), root / "untied", vocab, layers, tok)
    return out


def _untied_copy(src: Path, dst: Path, vocab: int, layers: int, tok: Path) -> str:
    from transformers import LlamaForCausalLM

    tied = LlamaForCausalLM.from_pretrained(str(src))
    model = LlamaForCausalLM(tied_config(vocab, layers, tie=False)).eval()
    state = dict(tied.state_dict())
    head = state["model.embed_tokens.weight"].clone()
    state["lm_head.weight"] = head + low_rank_delta({"lm_head": head}, 99, ("lm_head",))["lm_head"]
    model.load_state_dict(state)
    return save(model, dst, tok)
