"""Shared fixtures of the search tests: a tiny Llama family, a python fitness, an experiment."""

from __future__ import annotations

import textwrap
from pathlib import Path

# Log-likelihood of a fixed token sequence: cheap, deterministic, and it depends smoothly on
# every merged weight, so the search has something to climb.
SCORE_PY = """\
import torch

IDS = torch.arange(1, 17).remainder(60).unsqueeze(0)


def score(model, tokenizer):
    with torch.no_grad():
        logits = model(input_ids=IDS).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, IDS[:, 1:, None])
    return float(logp.mean())
"""


def make_family(root: Path, n_experts: int = 2, layers: int = 4, hidden: int = 32) -> dict:
    """A base and experts (base + small random deltas) as HF folders, with a tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    try:
        from tests.helpers.tiny_models import make_tiny_llama_family
    except ImportError:
        make_tiny_llama_family = None
    if make_tiny_llama_family is not None:
        fam = make_tiny_llama_family(root, n_experts=n_experts, layers=layers, hidden=hidden)
        if isinstance(fam, dict):
            return fam
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    folders = [root / "base"] + [root / f"expert{i}" for i in range(n_experts)]
    for i, out in enumerate(folders):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        if i > 0:  # an expert: the base plus a small random task vector
            g = torch.Generator().manual_seed(100 + i)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.save_pretrained(str(out))
        _tokenizer(out)
    return {"base": str(folders[0]), "experts": [str(f) for f in folders[1:]]}


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(97 + i % 26) + str(i // 26): i for i in range(64)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="a0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="a0", pad_token="a0").save_pretrained(
        str(folder)
    )


def write_experiment(
    tmp: Path,
    family: dict,
    *,
    max_evals: int,
    popsize: int,
    seed: int = 0,
    name: str = "exp.yaml",
    driver: str = "cma_es",
) -> Path:
    (tmp / "score.py").write_text(SCORE_PY)
    experts = "\n".join(f"  - {e}" for e in family["experts"])
    text = textwrap.dedent(f"""\
        name: tiny
        models:
        {{experts}}
        base_model: {family["base"]}
        space:
          kind: parameter
          merge_method: task_arithmetic
          layer_groups: 2
          params: [weight]
        fitness: {{python: score.py:score}}
        driver: {{name: {driver}, options: {{popsize: {popsize}}}}}
        budget: {{max_evals: {max_evals}}}
        seed: {seed}
        archive: {{top_k: 2}}
        evaluation: {{timeout_s: 60}}
        """).replace("{experts}", experts)
    p = tmp / name
    p.write_text(text)
    return p
