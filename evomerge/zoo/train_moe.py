"""Train and save the ``lm-moe`` zoo: one tiny Mixtral (sparse mixture of experts) on the
lm-skills tasks, the model that MoE expert merging (``evomerge/moe/``) reduces.

The model is transformers' ``MixtralForCausalLM``: each layer's feed-forward is ``experts``
SwiGLU experts behind a linear top-``top_k`` router. It trains with Mixtral's load-balancing
loss (Switch Transformer's auxiliary loss, ``router_aux_loss_coef``) so that every expert is
used: an expert the router never picks would make merging it free and the benchmark empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.zoo.lm import mixture, save_lm, train
from evomerge.zoo.tasks import train_sampler
from evomerge.zoo.tokenizer import build_tokenizer


@dataclass(frozen=True)
class MoEShape:
    """Mixtral size: ``experts`` SwiGLU experts of width ``intermediate`` per layer, ``top_k``
    of them per token."""

    layers: int = 2
    hidden: int = 96
    intermediate: int = 128
    heads: int = 4
    experts: int = 8
    top_k: int = 2
    max_positions: int = 64
    router_aux_loss_coef: float = 0.02


def new_moe_model(shape: MoEShape, vocab_size: int, seed: int):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        num_local_experts=shape.experts,
        num_experts_per_tok=shape.top_k,
        router_aux_loss_coef=shape.router_aux_loss_coef,
        output_router_logits=True,  # adds the load-balancing loss to the training loss
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return MixtralForCausalLM(cfg).float()


def build_moe_zoo(spec, out: Path, *, seed: int, progress: bool) -> dict:
    """Train the one MoE model on ``spec.base_mix``; returns the manifest's ``models``."""
    from tqdm.auto import tqdm

    tok = build_tokenizer()
    model = new_moe_model(spec.shape, len(tok), seed)
    mix = mixture([(w, train_sampler(t)) for t, w in spec.base_mix.items()])
    with tqdm(total=spec.base_phase.steps, desc=f"zoo {spec.name}", disable=not progress) as bar:
        train(model, tok, mix, spec.base_phase, seed=seed * 1000 + 1, progress=bar.update)
    # the saved model scores and generates without router logits in its outputs
    model.config.output_router_logits = False
    save_lm(model, tok, out / "moe")
    return {"moe": {"path": "moe", "role": "base", "expert_in": None}}
