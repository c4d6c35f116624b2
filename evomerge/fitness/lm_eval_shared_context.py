"""Answers that share a context, and contexts that share a prompt, scored on one pass over it.

lm-eval's ``hf`` backend scores each (context, continuation) request as its own row, context
and continuation together; it shares a context only between one-token continuations (one
row serves every answer of a question). A multiple-choice question with k multi-token answers
(ARC's, HellaSwag's and PIQA's phrase answers) runs its context k times: k x (c + a) positions
for a context of c tokens and answers of a. And every question of a few-shot task whose
examples are the same for each (lm-eval's ``first_n`` sampler, e.g. MMLU's) or of a chat
template with a fixed system turn runs that same prompt again.

Here the requests are grouped by context and the groups batched in the order of their tokens
(so neighbours share what prefix they can), and a batch runs as three passes on a KV cache:
the prefix its contexts share (``common_prefix``) once, the rest of each context but its last
token (right-padded, the padding masked), then every answer as a row on a copy of its
context's cache, each row being the context's last token followed by the answer but its last
token: the positions lm-eval reads, no others. Each token gets its position in lm-eval's own
row (``position_ids``) and sees the same tokens, so scores equal lm-eval's to float rounding
(another order of additions; tests/test_lm_eval_logits.py); the time saved is measured by
benchmarks/lm_eval_logits.py.

A batch takes this path when one of its contexts has several answers, one of them multi-token,
or its contexts share at least ``MIN_COMMON_PREFIX`` tokens (``plan``); a request lm-eval would
truncate or whose context is one token never does; with a sliding-window model only while a
batch's padded length fits the window (the window counts cache slots, padding included); only
with a model whose ``forward`` takes ``position_ids`` and a cache (``cache_argument``).
Everything else is lm-eval's own ``_loglikelihood_tokens``.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# request: (key, context tokens, continuation tokens), as lm-eval's _loglikelihood_tokens takes
Request = tuple[Any, Sequence[int], Sequence[int]]


MIN_COMMON_PREFIX = 8  # tokens a batch's contexts must share to be worth an extra pass


@dataclass(frozen=True)
class Group:
    context: tuple[int, ...]
    members: tuple[int, ...]  # indices of its requests
    longest: int  # its longest continuation

    @property
    def shares_answers(self) -> bool:
        """Several answers, one of them multi-token: lm-eval would run the context per answer."""
        return len(self.members) >= 2 and self.longest >= 2


def fitting_groups(
    requests: Sequence[Request], max_length: int, window: int | None = None
) -> tuple[list[Group], list[int]]:
    """(every context that can take the shared path, with its requests; indices of the
    requests that cannot: lm-eval would truncate them, or their context is one token)."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (_, context, _) in enumerate(requests):
        by_context.setdefault(tuple(context), []).append(i)
    limit = min(max_length, window or math.inf)
    groups, rest = [], []
    for context, members in by_context.items():
        longest = max(len(requests[i][2]) for i in members)
        if len(context) >= 2 and len(context) + longest <= limit:
            groups.append(Group(context, tuple(members), longest))
        else:
            rest.extend(members)
    return groups, rest


def shared_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens every sequence starts with."""
    first = sequences[0]
    n = len(first)
    for other in sequences[1:]:
        n = min(n, len(other))
        for k in range(n):
            if other[k] != first[k]:
                n = k
                break
    return n


def common_prefix(batch: Sequence[Group]) -> int:
    """Tokens every context of the batch starts with, its last token excluded."""
    return shared_length([g.context[:-1] for g in batch])


def batches(groups: Sequence[Group], rows: int, window: int | None = None) -> list[list[Group]]:
    """Groups packed into batches of at most ``rows`` answer rows (a larger group alone), in
    the order of their contexts' tokens, so that a batch's contexts share what prefix they
    can (a few-shot prompt, a chat template's system turn); with ``window``, a batch's longest
    context and longest answer together stay within it."""
    out: list[list[Group]] = []
    current: list[Group] = []
    n = 0
    for g in sorted(groups, key=lambda g: (g.context, g.members)):
        if current:
            longest = max(len(g.context), *(len(c.context) for c in current))
            width = longest + max(g.longest, *(c.longest for c in current))
            if n + len(g.members) > rows or (window is not None and width > window):
                out.append(current)
                current, n = [], 0
        current.append(g)
        n += len(g.members)
    if current:
        out.append(current)
    return out


def plan(
    requests: Sequence[Request], rows: int, max_length: int, window: int | None = None
) -> tuple[list[list[Group]], list[int]]:
    """(batches for the shared path, indices of the requests lm-eval's own path scores). A
    batch takes the shared path when one of its contexts has several answers, one of them
    multi-token, or when its contexts share at least ``MIN_COMMON_PREFIX`` tokens (run once
    for the batch); otherwise it saves nothing and goes to lm-eval."""
    groups, rest = fitting_groups(requests, max_length, window)
    shared = []
    for batch in batches(groups, rows, window):
        if any(g.shares_answers for g in batch) or (
            len(batch) > 1 and common_prefix(batch) >= MIN_COMMON_PREFIX
        ):
            shared.append(batch)
        else:
            rest.extend(i for g in batch for i in g.members)
    return shared, sorted(rest)


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


class PrefixMemo:
    """The KV cache of the prompt the last batch shared, for the next batches of the same call.

    Batches come in the order of their tokens, so a prompt every question shares (a few-shot
    prompt, a chat's system turn) starts every batch: it then runs once per call instead of
    once per batch. A batch whose prefix shares at least ``MIN_COMMON_PREFIX`` tokens with the
    kept one but not all of them (the first batch's questions may have started alike) runs
    that common part afresh and keeps it. Held by one lm-eval call only (one candidate's
    requests): a resident worker merges the next candidate into the same model."""

    def __init__(self) -> None:
        self.tokens: tuple[int, ...] = ()
        self.cache: Any = None

    def prefix(self, model: Any, tokens: Sequence[int], cache_name: str, device) -> Any:
        """A cache of ``tokens`` (a batch of one) the caller may change."""
        tokens = tuple(tokens)
        common = shared_length([self.tokens, tokens]) if self.tokens else 0
        if common < len(self.tokens):  # the kept prompt runs further than this batch shares
            if common >= MIN_COMMON_PREFIX:  # cut it back to what both share, run afresh
                self.tokens = tokens[:common]
                self.cache = _run(model, self.tokens, device, cache_name)
            else:  # nothing worth keeping: this batch's prompt replaces it
                common = 0
        cache = copy.deepcopy(self.cache) if common else None
        if common < len(tokens):
            cache = _run(model, tokens[common:], device, cache_name, cache, start=common)
        if not common:
            self.tokens, self.cache = tokens, copy.deepcopy(cache)
        return cache


def _run(model: Any, tokens, device, cache_name: str, cache: Any = None, start: int = 0) -> Any:
    """The cache after ``tokens`` (positions from ``start``, after ``cache``)."""
    ids = torch.tensor([list(tokens)], device=device)
    positions = torch.arange(start, start + len(tokens), device=device).unsqueeze(0)
    extra = {cache_name: cache} if cache is not None else {}
    out = model(ids, position_ids=positions, use_cache=True, logits_to_keep=1, **extra)
    return getattr(out, cache_name)


def score_batch(
    model: Any,
    batch: Sequence[Group],
    requests: Sequence[Request],
    device: torch.device,
    cache_name: str,
    softmax_dtype: torch.dtype | None,
    memo: PrefixMemo,
) -> dict[int, tuple[float, bool]]:
    """Request index -> (log-likelihood of its continuation, whether it is the greedy one).

    Three passes: the batch's common prefix once (``common_prefix``; its cache then copied to
    every context), the rest of each context but its last token (right-padded, masked), then
    every answer on a copy of its context's cache. A pass with nothing to run is skipped.
    ``cache_name``: ``cache_argument(model)``, found once per model by the caller; ``memo``
    keeps the shared prefix's cache for the call's next batches."""
    shared = common_prefix(batch) if len(batch) > 1 else len(batch[0].context) - 1
    cache = None
    if shared:
        cache = memo.prefix(model, batch[0].context[:shared], cache_name, device)
        cache.reorder_cache(torch.zeros(len(batch), dtype=torch.long, device=device))
    rest = max(len(g.context) - 1 for g in batch) - shared  # each context's own part, padded
    if rest:
        ids = torch.zeros(len(batch), rest, dtype=torch.long)
        mask = torch.zeros(len(batch), shared + rest, dtype=torch.long)
        mask[:, :shared] = 1
        for b, g in enumerate(batch):
            own = g.context[shared:-1]
            ids[b, : len(own)] = torch.tensor(own, dtype=torch.long)
            mask[b, shared : shared + len(own)] = 1
        positions = torch.arange(shared, shared + rest).expand(len(batch), rest)
        out = model(
            ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            logits_to_keep=1,
            **({cache_name: cache} if cache is not None else {}),
        )
        cache = getattr(out, cache_name)
    prefix = shared + rest
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
        **{cache_name: cache},
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
