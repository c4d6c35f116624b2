"""Answers that share a context, scored on one pass over it (its KV cache).

lm-eval's ``hf`` backend scores each (context, continuation) request as its own row, context
and continuation together; it shares a context only between one-token continuations (one
row serves every answer of a question). A multiple-choice question with k multi-token answers
(ARC's, HellaSwag's and PIQA's phrase answers; a few-shot prompt makes the context long) runs
its context k times: k x (c + a) positions for a context of c tokens and answers of a.

Here a question's requests run as two passes: the context but its last token once (its KV
cache kept, no logits), then every answer as a row on that cache, copied per answer, each row
being the context's last token followed by the answer but its last token: the positions
lm-eval reads, no others. That costs c + k x a positions. Rows of several questions are
batched: contexts right-padded (the padding masked), answers right after the longest context,
each row given its true positions (``position_ids``), so every real token sees the same tokens
at the same positions as in lm-eval's own row; scores equal lm-eval's to float rounding
(another order of additions; tests/test_lm_eval_logits.py); the time saved is measured by
benchmarks/lm_eval_logits.py.

Only requests lm-eval would not truncate and whose context holds at least two tokens take
this path, in groups of two or more answers with one of at least two tokens (one-token
answers lm-eval already shares); with a sliding-window model, only while a batch's padded
length fits the window (the window counts cache slots, padding included); only with a model
whose ``forward`` takes ``position_ids`` and a cache (``cache_argument``). Everything else is
lm-eval's own ``_loglikelihood_tokens``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# request: (key, context tokens, continuation tokens), as lm-eval's _loglikelihood_tokens takes
Request = tuple[Any, Sequence[int], Sequence[int]]


@dataclass(frozen=True)
class Group:
    context: tuple[int, ...]
    members: tuple[int, ...]  # indices of its requests
    longest: int  # its longest continuation


def shared_context_groups(
    requests: Sequence[Request], max_length: int, window: int | None = None
) -> tuple[list[Group], list[int]]:
    """(groups that take the shared path, indices of the requests that do not)."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (_, context, _) in enumerate(requests):
        by_context.setdefault(tuple(context), []).append(i)
    limit = min(max_length, window or math.inf)
    groups, rest = [], []
    for context, members in by_context.items():
        longest = max(len(requests[i][2]) for i in members)
        if (
            len(members) >= 2
            and longest >= 2
            and len(context) >= 2
            and (len(context) + longest <= limit)
        ):
            groups.append(Group(context, tuple(members), longest))
        else:
            rest.extend(members)
    return groups, sorted(rest)


def batches(groups: Sequence[Group], rows: int, window: int | None = None) -> list[list[Group]]:
    """Groups packed into batches of at most ``rows`` answer rows (a larger group alone),
    longest context first; with ``window``, a batch's longest context and longest answer
    together stay within it."""
    out: list[list[Group]] = []
    current: list[Group] = []
    n = 0
    for g in sorted(groups, key=lambda g: (-len(g.context), g.members)):
        if current:
            width = len(current[0].context) + max(g.longest, *(c.longest for c in current))
            if n + len(g.members) > rows or (window is not None and width > window):
                out.append(current)
                current, n = [], 0
        current.append(g)
        n += len(g.members)
    if current:
        out.append(current)
    return out


def cache_argument(model: Any) -> str | None:
    """The name ``forward`` takes the KV cache under and its output returns it as: ``cache``
    from transformers 5.x (``past_key_values``, deprecated there, before); None when it names
    neither, or not ``position_ids``: such a model (e.g. Twin-Merging's, whose router reads the
    whole input) is scored by lm-eval's own path."""
    try:
        params = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return None
    if "position_ids" not in params:
        return None
    return next((n for n in ("cache", "past_key_values") if n in params), None)


def score_batch(
    model: Any,
    batch: Sequence[Group],
    requests: Sequence[Request],
    device: torch.device,
    softmax_dtype: torch.dtype | None = None,
) -> dict[int, tuple[float, bool]]:
    """Request index -> (log-likelihood of its continuation, whether it is the greedy one)."""
    prefix = max(len(g.context) for g in batch) - 1
    ids = torch.zeros(len(batch), prefix, dtype=torch.long)
    mask = torch.zeros(len(batch), prefix, dtype=torch.long)
    for b, g in enumerate(batch):
        ids[b, : len(g.context) - 1] = torch.tensor(g.context[:-1])
        mask[b, : len(g.context) - 1] = 1
    name = cache_argument(model)
    assert name is not None, "score_batch needs a model whose forward takes a KV cache"
    out = model(ids.to(device), attention_mask=mask.to(device), use_cache=True, logits_to_keep=1)
    cache = getattr(out, name)
    rows = [(b, i) for b, g in enumerate(batch) for i in g.members]
    cache.reorder_cache(torch.tensor([b for b, _ in rows], device=device))

    width = max(len(requests[i][2]) for _, i in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    full = torch.zeros(len(rows), prefix + width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    for r, (b, i) in enumerate(rows):
        context, continuation = batch[b].context, requests[i][2]
        row = [context[-1], *continuation[:-1]]
        ids[r, : len(row)] = torch.tensor(row)
        full[r, : len(context) - 1] = 1
        full[r, prefix : prefix + len(row)] = 1
        positions[r] = torch.arange(len(context) - 1, len(context) - 1 + width)
    logits = model(
        ids.to(device),
        attention_mask=full.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **{name: cache},
    ).logits
    logprobs = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
    scores = {}
    for r, (_, i) in enumerate(rows):
        continuation = torch.tensor(list(requests[i][2]), device=logprobs.device)
        lp = logprobs[r, : len(continuation)]
        picked = lp.gather(1, continuation.unsqueeze(-1)).squeeze(-1)
        greedy = bool((lp.argmax(dim=-1) == continuation).all())
        scores[i] = (float(picked.sum()), greedy)
    return scores
