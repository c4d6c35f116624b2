"""Tiny Llama-architecture models for the zoo and the loop that trains them on CPU.

Training is deterministic on CPU: every batch is drawn from a ``random.Random`` seeded per
phase, the model is initialised under ``torch.manual_seed``, and the thread count is pinned,
so the same seed gives the same weights bit for bit.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

Item = tuple[str, str]  # (prompt, answer); the training text is prompt + answer + "\n"
Sampler = Callable[[random.Random], Item]


@dataclass(frozen=True)
class LMShape:
    """Model size. Defaults: 4 layers, hidden 128 (~0.8M parameters)."""

    layers: int = 4
    hidden: int = 128
    intermediate: int = 384
    heads: int = 4
    max_positions: int = 64


@dataclass(frozen=True)
class Phase:
    """One training run: ``steps`` AdamW steps at ``lr`` (cosine decay) on a mixture."""

    steps: int
    lr: float
    batch: int = 64
    answer_only: bool = True  # loss on the answer only: prompt characters are unpredictable
    warmup: int = 20


def new_model(shape: LMShape, vocab_size: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    return model.float()


def _batch(tok, items: Sequence[Item], answer_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels (-100 where no loss is taken)."""
    rows, labels = [], []
    for prompt, answer in items:
        p = tok.encode(prompt, add_special_tokens=False)
        a = tok.encode(answer + "\n", add_special_tokens=False)
        rows.append(p + a)
        labels.append(([-100] * len(p) if answer_only else p) + a)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
    return ids, lab


def mixture(parts: Sequence[tuple[float, Sampler]]) -> Sampler:
    """A sampler drawing from ``parts`` with the given weights."""
    weights = [w for w, _ in parts]
    samplers = [s for _, s in parts]

    def draw(rng: random.Random) -> Item:
        return rng.choices(samplers, weights=weights)[0](rng)

    return draw


def train(model, tok, sampler: Sampler, phase: Phase, seed: int, progress=None) -> float:
    """Train in place; returns the mean loss of the last 20 steps."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=phase.lr, weight_decay=0.0, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < phase.warmup:
            return (step + 1) / phase.warmup
        frac = (step - phase.warmup) / max(1, phase.steps - phase.warmup)
        return 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi)).item()) * 0.9 + 0.1

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    recent: list[float] = []
    for _ in range(phase.steps):
        ids, lab = _batch(tok, [sampler(rng) for _ in range(phase.batch)], phase.answer_only)
        loss = model(input_ids=ids, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-20:]
        if progress is not None:
            progress(1)
    model.eval()
    return sum(recent) / len(recent)


def save_lm(model, tok, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
