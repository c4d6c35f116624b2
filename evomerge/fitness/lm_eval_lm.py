"""lm-eval's ``HFLM``, computing the LM head's logits only where a log-likelihood reads them.

For a log-likelihood request (multiple choice, a gold answer's log-likelihood, perplexity)
lm-eval's ``hf`` backend runs the model over context + continuation and keeps the logits of the
continuation's positions only; the model still projects every position onto the vocabulary
and lm-eval takes the log-softmax of all of them. With a large vocabulary that projection is
much of the work: Gemma-3-270M's output layer (262k tokens x 640) holds 1.7 times its blocks'
weights, SmolLM2-135M's a quarter. transformers' causal LMs take ``logits_to_keep=k`` (the
last k positions only; ``generate`` passes 1), and lm-eval's ``_loglikelihood_tokens`` already
reads a shorter logits tensor as the tail of its right-padded batch (it shifts each row's
input length by ``logits.shape[1] - padding_len_inp``).

``ContinuationHFLM`` passes the smallest k that still holds every row's continuation: it
notes, per request being scored, the row lm-eval builds from it and where its continuation
starts, and finds each row of a batch there (a row it cannot find gets every position). It also
runs a context once for all its answers, and a prompt several contexts share once for all of
them (a KV cache, ``evomerge.fitness.lm_eval_shared_context``), where lm-eval would run them
again per answer and per question; and a generation batch's shared prompt once for the
batch (``evomerge.fitness.lm_eval_shared_generation``). Everything else (batch-size probing,
the decoding itself) is lm-eval's and transformers' own code. Models whose ``forward`` does
not name ``logits_to_keep`` (the test transformers uses for ``generate``) get every position.
Scores equal lm-eval's own to float rounding (a projection of fewer rows may add in another
order; tests/test_lm_eval_logits.py) and a fresh lm-eval ``hf`` run item by item
(tests/test_lm_eval_parity.py); the time saved is measured by benchmarks/lm_eval_logits.py.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from evomerge.fitness.lm_eval_shared_context import (
    PrefixMemo,
    cache_argument,
    plan,
    score_batch,
)
from evomerge.fitness.lm_eval_shared_generation import prefix_cache, shared_layout


def _strip_pad(tokens) -> tuple[int, ...]:
    """A row without its trailing 0s: lm-eval right-pads with token 0 (a real trailing 0 goes
    too, the same way for the request and for its padded row)."""
    tokens = list(tokens)
    while tokens and tokens[-1] == 0:
        tokens.pop()
    return tuple(tokens)


def continuation_starts(requests, max_length: int) -> dict[tuple[int, ...], int]:
    """Input row (unpadded, see ``_strip_pad``) -> the first position whose logits lm-eval
    reads for it: its input length minus its continuation's, the input being lm-eval's
    ``(context + continuation)[-(max_length + 1):][:-1]``. Requests with the same row keep the
    earliest start."""
    starts: dict[tuple[int, ...], int] = {}
    for _, context, continuation in requests:
        row = (list(context) + list(continuation))[-(max_length + 1) :][:-1]
        key = _strip_pad(row)
        start = max(0, len(row) - len(continuation))
        starts[key] = min(start, starts.get(key, start))
    return starts


def keep_positions(inps: torch.Tensor, starts: dict[tuple[int, ...], int]) -> int:
    """The last positions of the right-padded batch ``inps`` that hold every row's scored
    positions: the batch width when a row is not one of ``starts``."""
    width = inps.shape[1]
    first = width
    for row in inps.tolist():
        start = starts.get(_strip_pad(row))
        if start is None:
            return width
        first = min(first, start)
    return width - first


def takes_logits_to_keep(model: Any) -> bool:
    forward = getattr(model, "forward", None)
    try:
        return "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def _sliding_window(model: Any) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    return window if isinstance(window, int) and window > 0 else None


def continuation_hflm(
    model: Any, tokenizer: Any, batch_size: int | str, share_contexts: bool = True
) -> Any:
    """An ``HFLM`` around the resident ``model`` that projects only continuation positions and
    (``share_contexts``) scores the answers of one context on one pass over it
    (``evomerge.fitness.lm_eval_shared_context``); lm-eval's own ``HFLM`` for a model that
    cannot be asked to."""
    from lm_eval.models.huggingface import HFLM

    if not takes_logits_to_keep(model):
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

    class ContinuationHFLM(HFLM):
        _starts: dict[tuple[int, ...], int] | None = None
        _memo: PrefixMemo | None = None  # generation: the prompt this call's batches share
        _detected: dict[int, int]  # batch_size auto: longest row's length -> detected size

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._detected = {}

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            # requests: (key, context tokens, continuation tokens)
            shared, rest = [], list(range(len(requests)))
            if share_contexts and self.backend == "causal" and self._cache_argument:
                rows = self._rows(requests, override_bs)
                if rows is not None:
                    shared, rest = plan(requests, rows, self.max_length, self._window)
            results: list[tuple[float, bool] | None] = [None] * len(requests)
            memo = PrefixMemo()  # this call's only: the next call may be the next candidate
            for batch in shared:
                with torch.no_grad(), self._autocast():
                    scored = score_batch(
                        self.model,
                        batch,
                        requests,
                        self.device,
                        self._cache_argument,
                        self._softmax_dtype,
                        memo,
                    )
                for i, answer in scored.items():
                    results[i] = answer
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            if rest:
                own = requests if not shared else [requests[i] for i in rest]
                self._starts = continuation_starts(own, self.max_length)
                try:
                    out = super()._loglikelihood_tokens(
                        own, disable_tqdm=disable_tqdm, override_bs=override_bs
                    )
                finally:
                    self._starts = None
                for i, answer in zip(rest, out, strict=True):
                    results[i] = answer
            return results

        def _rows(self, requests, override_bs) -> int | None:
            """Answer rows per shared-context pass: the batch size; with 'auto', the one
            lm-eval detects for the longest request as a whole row (an answer row holds fewer
            new positions, and its context's cache, than that row), None where it cannot be
            detected (lm-eval's own path)."""
            size = self.batch_size
            if isinstance(size, int) and size > 0:
                return size
            if isinstance(override_bs, int) and override_bs > 0:
                return override_bs
            if not str(size).startswith("auto"):
                return None
            if not requests:
                return None
            longest = max(
                range(len(requests)), key=lambda i: len(requests[i][1]) + len(requests[i][2])
            )
            length = len(requests[longest][1]) + len(requests[longest][2])
            if length not in self._detected:  # probing runs real forwards: once per length
                self._detected[length] = self._detect_batch_size(requests, longest)
            detected = self._detected[length]
            return detected if isinstance(detected, int) and detected > 0 else None

        @functools.cached_property
        def _cache_argument(self) -> str | None:
            return cache_argument(self.model)

        @property
        def _window(self) -> int | None:
            return _sliding_window(self.model)

        @property
        def _softmax_dtype(self):
            return getattr(self, "softmax_dtype", None)  # lm-eval >= 0.4.9 has it

        def _autocast(self):
            mixed = getattr(self, "mixed_precision_dtype", None)  # lm-eval >= 0.4.8 has it
            return torch.autocast(
                device_type=self.device.type, dtype=mixed, enabled=mixed is not None
            )

        def generate_until(self, requests, disable_tqdm=False):
            # one memo per call: the next call may be the next candidate in the same model
            self._memo = PrefixMemo()
            try:
                return super().generate_until(requests, disable_tqdm=disable_tqdm)
            finally:
                self._memo = None

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            # a prompt the batch's rows share runs once (lm_eval_shared_generation.py)
            name, window = self._cache_argument, self._window
            layout = None
            if share_contexts and self.backend == "causal" and name is not None:
                if window is None or max_length <= window:
                    pad = self.tokenizer.pad_token_id
                    mask = generation_kwargs.get("attention_mask")
                    layout = shared_layout(context, mask, 0 if pad is None else pad)
            if layout is None:
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            memo = self._memo or PrefixMemo()  # a call from outside generate_until: its own
            with torch.no_grad(), self._autocast():
                cache = prefix_cache(self.model, layout, name, memo)
            generation_kwargs["attention_mask"] = layout.attention_mask
            generation_kwargs[name] = cache
            return super()._model_generate(layout.input_ids, max_length, stop, **generation_kwargs)

        def _model_call(self, inps, attn_mask=None, labels=None):
            starts = self._starts
            if starts is None or attn_mask is not None or self.backend != "causal":
                return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            keep = keep_positions(inps, starts)
            if keep >= inps.shape[1]:
                return super()._model_call(inps)
            with torch.no_grad(), self._autocast():
                return self.model(inps, logits_to_keep=keep).logits

    return ContinuationHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
