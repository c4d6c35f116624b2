"""Tiny random Llama families for engine tests: a base and experts = base + small noise."""

from __future__ import annotations

from pathlib import Path

VOCAB = 64


def save_tokenizer(folder: Path) -> None:
    """A 64-word WordLevel tokenizer (no download, a few ms)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", pad_token="w0", eos_token="w1"
    )
    fast.save_pretrained(str(folder))


def tiny_llama_config(layers: int = 4, hidden: int = 32, tie_embeddings: bool = False):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie_embeddings,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=2,
    )


def make_tiny_llama_family(
    tmp_path: str | Path,
    n_experts: int = 3,
    layers: int = 4,
    hidden: int = 32,
    seed: int = 0,
    tie_embeddings: bool = False,
    max_shard_size: str | None = None,
    noise: float = 0.02,
) -> tuple[str, list[str]]:
    """(base folder, expert folders) saved as safetensors HF folders with a tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    root = Path(tmp_path)
    cfg = tiny_llama_config(layers, hidden, tie_embeddings)
    torch.manual_seed(seed)
    base = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norms too, so norm tensors are merged non-trivially
        for n, p in base.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn(p.shape))
    folders = [root / "base"] + [root / f"expert{i}" for i in range(n_experts)]
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for i, out in enumerate(folders):
        if i > 0:
            g = torch.Generator().manual_seed(seed * 1000 + i)
            with torch.no_grad():
                for k, p in base.state_dict().items():
                    p.copy_(state[k] + noise * torch.randn(p.shape, generator=g))
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        base.save_pretrained(str(out), safe_serialization=True, **kwargs)
        save_tokenizer(out)
    return str(folders[0]), [str(f) for f in folders[1:]]
