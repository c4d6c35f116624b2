"""Generation requests whose prompts share a prefix: the prefix runs once, not once per row.

lm-eval's ``hf`` backend left-pads a batch of contexts and hands it to ``model.generate``,
which runs every row's whole context before the first new token. A few-shot generation task
whose examples are the same for every question (lm-eval's ``first_n`` sampler: gsm8k-cot's,
BBH's) or a chat template with a fixed system turn runs that same prompt once per row: with
an 8-shot prompt of ~800 tokens and ~100-token questions, most of a batch's prefill.

Here a batch whose rows share at least ``MIN_COMMON_PREFIX`` tokens (each row's last token
left out, so that every row has a token of its own to start from) is laid out as
``[shared prefix][padding][own part]`` instead of ``[padding][shared prefix][own part]``: the
same width, so the new tokens sit in the columns lm-eval reads them from, and the same
positions, since ``generate`` numbers each row's tokens from its attention mask, the padding
masked. The prefix runs once, as a batch of one (and once for all the batches of one
lm-eval call that start with it: ``PrefixMemo``), its KV cache is copied to every row and
``generate`` runs the rest. Each token then sees the same tokens at the same positions as on
lm-eval's path, so greedy decoding picks the same tokens up to float rounding (another order
of additions; tests/test_lm_eval_shared_generation.py). The time saved is measured by
benchmarks/lm_eval_logits.py (``real_target`` with 4 worked examples).

Only with a model whose ``forward`` takes a cache and ``position_ids`` (``cache_argument``),
and with a sliding-window model only while the whole row, new tokens included, fits the
window: the window counts cache slots, and the padding moved into the middle would count
between the prefix and the row's own part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from evomerge.fitness.lm_eval_shared_context import MIN_COMMON_PREFIX, PrefixMemo, shared_length


@dataclass(frozen=True)
class SharedLayout:
    shared: int  # tokens every row starts with, run once
    input_ids: torch.Tensor  # [prefix][padding][own part] per row, the width of lm-eval's
    attention_mask: torch.Tensor


def shared_layout(
    context: torch.Tensor, attention_mask: torch.Tensor | None, pad_id: int
) -> SharedLayout | None:
    """The batch laid out for one pass over its shared prefix, or None when it has no
    ``MIN_COMMON_PREFIX`` tokens to share, one row, or is not left-padded as lm-eval pads."""
    if attention_mask is None or context.shape[0] < 2:
        return None
    width = context.shape[1]
    rows = []
    for ids, mask in zip(context.tolist(), attention_mask.tolist(), strict=True):
        n = sum(mask)
        if n < 2 or mask != [0] * (width - n) + [1] * n:
            return None
        rows.append(ids[width - n :])
    shared = shared_length([row[:-1] for row in rows])
    if shared < MIN_COMMON_PREFIX:
        return None
    ids = torch.full_like(context, pad_id)
    mask = torch.zeros_like(attention_mask)
    ids[:, :shared] = context.new_tensor(rows[0][:shared])
    mask[:, :shared] = 1
    for b, row in enumerate(rows):
        own = row[shared:]
        ids[b, width - len(own) :] = context.new_tensor(own)
        mask[b, width - len(own) :] = 1
    return SharedLayout(shared, ids, mask)


def prefix_cache(model: Any, layout: SharedLayout, cache_name: str, memo: PrefixMemo) -> Any:
    """The KV cache of the shared prefix, run once (``memo``: once for the batches of one
    lm-eval call that share it) and copied to every row of the batch."""
    ids = layout.input_ids
    cache = memo.prefix(model, ids[0, : layout.shared].tolist(), cache_name, ids.device)
    cache.reorder_cache(torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device))
    return cache
