"""What every method reads from calibration text: per MoE layer, the tokens that reach the
router, the router's logits and how often each expert is chosen.

Each calibration line is run on its own (no padding token ever reaches a router), and hooks on
each router record its input and output. ``frequency[e]`` is the share of top-k selections that
went to expert ``e`` over all calibration tokens (MC-SMoE's "activated frequency"; it sums to 1
per layer), counted from the router's own top-k, as the model routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from evomerge.errors import UserInputError
from evomerge.moe.experts import moe_blocks


@dataclass(frozen=True)
class LayerStats:
    tokens: torch.Tensor  # [T, H]: the hidden states the router and the experts receive
    logits: torch.Tensor  # [T, E]: router logits
    counts: torch.Tensor  # [E]: top-k selections per expert

    @property
    def frequency(self) -> torch.Tensor:
        return self.counts / self.counts.sum()


def frequency_from_logits(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Top-k selections per expert of router ``logits`` [T, E] (softmax keeps the order)."""
    chosen = torch.topk(logits, top_k, dim=-1).indices.flatten()
    return torch.bincount(chosen, minlength=logits.shape[-1]).double()


@torch.no_grad()
def routing_stats(model, tokenizer, lines: Sequence[str]) -> list[LayerStats]:
    """One ``LayerStats`` per MoE layer from running ``model`` on each of ``lines``."""
    lines = [s for s in lines if s.strip()]
    if not lines:
        raise UserInputError("--calibration: the file holds no text; give one sample per line")
    blocks = moe_blocks(model)
    seen: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in blocks]

    def recorder(i: int):
        def hook(_module, args, output):
            seen[i].append((args[0].reshape(-1, args[0].shape[-1]).float(), output[0].float()))

        return hook

    handles = [b.gate.register_forward_hook(recorder(i)) for i, b in enumerate(blocks)]
    model.eval()
    try:
        for line in lines:
            ids = tokenizer.encode(line, add_special_tokens=False, return_tensors="pt")
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    top_k = model.config.num_experts_per_tok
    stats = []
    for rows in seen:
        tokens = torch.cat([t for t, _ in rows])
        logits = torch.cat([lg for _, lg in rows])
        stats.append(LayerStats(tokens, logits, frequency_from_logits(logits, top_k)))
    return stats
