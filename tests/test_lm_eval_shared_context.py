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
    MIN_COMMON_PREFIX,
    Group,
    batches,
    cache_argument,
    common_prefix,
    fitting_groups,
    plan,
)

REPO = Path(__file__).resolve().parents[1]


def test_groups_are_the_contexts_lm_eval_would_not_cut():
    requests = [
        (None, [1, 2, 3], [7, 8]),  # 0: context 1 2 3 with two answers, one multi-token
        (None, [1, 2, 3], [9]),  # 1
        (None, [4, 5], [7]),  # 2: one-token answers only
        (None, [4, 5], [8]),  # 3
        (None, [3], [7, 8]),  # 4: a one-token context: no prefix to cache
        (None, [1, 1, 1, 1], [7, 8, 9]),  # 5: 7 tokens, over max_length 6: lm-eval cuts it
        (None, [1, 1, 1, 1], [7]),  # 6
    ]
    groups, rest = fitting_groups(requests, max_length=6)
    assert groups == [Group((1, 2, 3), (0, 1), 2), Group((4, 5), (2, 3), 1)]
    assert sorted(rest) == [4, 5, 6]
    assert [g.shares_answers for g in groups] == [True, False]  # lm-eval shares one-token ones
    # a sliding window of 4 cache slots: context 1 2 3 and a 2-token answer need 5
    assert fitting_groups(requests, max_length=6, window=4)[0] == [groups[1]]


def test_batches_follow_the_contexts_tokens_hold_rows_answers_and_fit_the_window():
    a = Group((1,) * 10, (0, 1, 2), 2)
    b = Group((1,) * 6, (3, 4), 5)
    c = Group((2,) * 3, (5, 6, 7, 8, 9), 2)  # more answers than rows: alone
    assert batches([c, a, b], rows=5) == [[b, a], [c]]  # (1,)*6 sorts before (1,)*10
    assert batches([a, b], rows=1) == [[b], [a]]
    # window 14: a's 10-token context with b's 5-token answer would need 15 slots
    assert batches([a, b], rows=8, window=14) == [[b], [a]]
    assert batches([a, b], rows=8, window=15) == [[b, a]]


def test_common_prefix_leaves_each_contexts_last_token_out():
    shot = tuple(range(100, 110))  # a 10-token few-shot prompt every question starts with
    one, two = Group(shot + (1, 2, 3), (0,), 1), Group(shot + (1, 5), (1,), 1)
    assert common_prefix([one, two]) == 11
    assert common_prefix([one, Group(shot, (2,), 1)]) == 9  # the last token is never in it
    assert common_prefix([one, Group((7,) + shot, (3,), 1)]) == 0


def test_plan_shares_several_answers_or_a_long_common_prefix_and_nothing_else():
    shot = list(range(100, 100 + MIN_COMMON_PREFIX))
    few_shot = [(None, shot + [q, q], [7]) for q in (1, 2, 3)]  # one answer each, one prompt
    assert plan(few_shot, rows=8, max_length=99) == (
        [[Group(tuple(r[1]), (i,), 1) for i, r in enumerate(few_shot)]],
        [],
    )
    short = [(None, shot[:-1] + [q, q], [7]) for q in (1, 2, 3)]  # one token too few in common
    assert plan(short, rows=8, max_length=99) == ([], [0, 1, 2])
    answers = [(None, [5, 6], [7, 8]), (None, [5, 6], [9])]  # several answers, no prompt
    assert plan(answers, rows=8, max_length=99) == ([[Group((5, 6), (0, 1), 2)]], [])


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


def test_prefix_memo_runs_a_shared_prompt_once_per_call_and_keeps_its_cache_exact():
    """Batches of one call starting with the same prompt run it once; a first batch whose
    questions also started alike is cut back to the prompt they all share, once; each cache
    equals the prompt run afresh."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.fitness.lm_eval_shared_context import PrefixMemo

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    name = cache_argument(model)
    ran = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: ran.append(
            kwargs.get("input_ids", args[0] if args else None).shape[1]
        ),
        with_kwargs=True,
    )
    prompt = list(range(1, 21))
    batches = [prompt + [30, 31, 32], prompt + [40], prompt + [41, 42], [9] * 12]
    memo = PrefixMemo()
    try:
        with torch.no_grad():
            for tokens in batches:
                cache = memo.prefix(model, tokens, name, "cpu")
                fresh = getattr(model(torch.tensor([tokens]), use_cache=True), name)
                for got, want in zip(cache.layers, fresh.layers, strict=True):
                    assert torch.allclose(got.keys, want.keys, atol=1e-5)
                    assert torch.allclose(got.values, want.values, atol=1e-5)
                cache.reorder_cache(torch.zeros(3, dtype=torch.long))  # the caller's copy
    finally:
        hook.remove()
    # run: 23; the prompt cut back to its 20 shared tokens, +1; +2; another prompt: 12
    assert ran == [23, 23, 20, 1, 21, 2, 22, 12, 12], ran
    assert memo.tokens == tuple([9] * 12)
