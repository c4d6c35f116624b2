"""Answers of one context scored on one pass over it (evomerge/fitness/lm_eval_shared_context.py):
which requests share, how they are batched, which models can, and the smollm2-experts target as a
multiple choice through the fitness, item by item as lm-eval's own HFLM scores it. Log-likelihoods
on the real models, against lm-eval's, are in tests/test_lm_eval_logits.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from evomerge.fitness.lm_eval_shared_context import (
    Group,
    batches,
    cache_argument,
    shared_context_groups,
)

REPO = Path(__file__).resolve().parents[1]


def test_groups_are_contexts_lm_eval_would_neither_share_nor_cut():
    requests = [
        (None, [1, 2, 3], [7, 8]),  # 0: context 1 2 3 with two answers, one multi-token
        (None, [1, 2, 3], [9]),  # 1
        (None, [4, 5], [7]),  # 2: one-token answers only: lm-eval shares them already
        (None, [4, 5], [8]),  # 3
        (None, [6, 6], [7, 8, 9]),  # 4: a single answer: nothing to share
        (None, [3], [7, 8]),  # 5: a one-token context: no prefix to cache
        (None, [3], [9, 9]),  # 6
        (None, [1, 1, 1, 1], [7, 8, 9]),  # 7: 7 tokens, over max_length 6: lm-eval cuts it
        (None, [1, 1, 1, 1], [7]),  # 8
    ]
    groups, rest = shared_context_groups(requests, max_length=6)
    assert groups == [Group((1, 2, 3), (0, 1), 2)]
    assert rest == [2, 3, 4, 5, 6, 7, 8]
    # a sliding window of 4 cache slots: context 1 2 3 and a 2-token answer need 5
    assert shared_context_groups(requests, max_length=6, window=4)[0] == []


def test_batches_hold_at_most_rows_answers_and_fit_the_window():
    a = Group((1,) * 10, (0, 1, 2), 2)
    b = Group((1,) * 6, (3, 4), 5)
    c = Group((1,) * 3, (5, 6, 7, 8, 9), 2)  # more answers than rows: alone
    assert batches([c, b, a], rows=5) == [[a, b], [c]]
    assert batches([a, b], rows=1) == [[a], [b]]
    # window 14: a's 10-token context with b's 5-token answer would need 15 slots
    assert batches([a, b], rows=8, window=14) == [[a], [b]]
    assert batches([a, b], rows=8, window=15) == [[a, b]]


def test_only_models_that_take_a_cache_and_positions_share_contexts():
    class Current(torch.nn.Module):  # transformers 5.x
        def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None): ...

    class Older(torch.nn.Module):
        def forward(self, input_ids, position_ids=None, past_key_values=None): ...

    class Routed(torch.nn.Module):  # Twin-Merging's: its router reads the whole input
        def forward(self, input_ids=None, attention_mask=None, **kwargs): ...

    assert cache_argument(Current()) == "cache"
    assert cache_argument(Older()) == "past_key_values"
    assert cache_argument(Routed()) is None


def _loader():
    """fitness/real_target/loader.py, as lm-eval loads it (by file)."""
    import importlib.util

    path = REPO / "fitness" / "real_target" / "loader.py"
    spec = importlib.util.spec_from_file_location("real_target_loader", path)
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    return loader


def _lm_evals_own(model, tokenizer, batch_size):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def test_real_target_mc_through_the_fitness_equals_lm_evals_own(smollm2_dir, monkeypatch):
    """The smollm2-experts target as a choice among four phrase answers, scored by evomerge's
    lm-eval fitness (shared contexts) and by lm-eval's own HFLM: the same accuracy per item;
    each item's choices are four distinct answers, the gold one among them."""
    import datasets

    from evomerge.eval_cli import load_model
    from evomerge.fitness import build_fitness, lm_eval_lm, parse_fitness_config
    from evomerge.zoo import real_tasks

    rows = [json.loads(line) for line in (REPO / "fitness/real_target/test.jsonl").open()]
    for doc in _loader().with_choices(datasets.Dataset.from_list(rows[:12])):
        assert len(set(doc["choices"])) == 4 and doc["choices"][doc["label"]] == doc["answer"]

    task = {
        "kind": "lm_eval",
        "task": "real_target_mc",
        "include_path": str(REPO / "fitness" / "real_target"),
        "apply_chat_template": True,
        "system_instruction": real_tasks.SYSTEM,
        "limit": 8,
        "batch_size": 8,
    }
    model, tokenizer = load_model(smollm2_dir)
    ours = build_fitness(parse_fitness_config({"tasks": [task]}))(model, tokenizer)
    with monkeypatch.context() as patch:
        patch.setattr(lm_eval_lm, "continuation_hflm", _lm_evals_own)
        want = build_fitness(parse_fitness_config({"tasks": [task]}))(model, tokenizer)
    got, want = ours.tasks["real_target_mc"], want.tasks["real_target_mc"]
    assert got.per_example == want.per_example and len(got.per_example) == 8
