"""Parallel texts for the smollm2-experts language expert (zoo/zel_remap.py): the same question
with its numbers in digits (what the instruct model reads) and in Zel (what the expert must read
as the same thing), token by token, inside the instruct model's chat template.

A Zel syllable and a digit are one token each in SmolLM2's tokenizer (``token_ids`` checks), and
a digit run after a space is one space token more, so the two renderings align position by
position (``parallel``). None of the texts asks the skill (a shift) or the language task (writing
Zel); questions the task folders score are skipped by the trainers (``real_tasks.held_out``).
"""

from __future__ import annotations

import random

from evomerge.zoo.real_tasks import ZEL, messages

DIGITS = "0123456789"


def token_ids(tok) -> dict:
    """Zel bare / spaced and digit token ids; each must be one token."""

    def one(s: str) -> int:
        ids = tok(s, add_special_tokens=False).input_ids
        if len(ids) != 1:  # the alignment needs one token per digit and per syllable
            raise ValueError(f"{s!r} is {len(ids)} tokens in this tokenizer, not one")
        return ids[0]

    return {
        "digit": [one(d) for d in DIGITS],
        "bare": [one(z) for z in ZEL],
        "space": [one(" " + z) for z in ZEL],
        "space_tok": one(" "),
    }


def _num(rng: random.Random) -> str:
    n = rng.choice([1, 2, 2, 3, 3, 4, 4, 5])
    return "".join(rng.choice(DIGITS) for _ in range(n))


def reader_text(rng: random.Random) -> tuple[list, str]:
    """A question with numbers (segments: text or ('num', digits, spaced)) and its answer in
    digits. None of these asks the skill (a shift) or the language task (writing Zel)."""
    a, b = _num(rng), _num(rng)
    ia, ib = int(a), int(b)
    forms = [
        (["Repeat", ("num", a, True), "."], a),
        (["What comes after", ("num", a, True), "?"], str(ia + 1)),
        (["What number comes before", ("num", a, True), "?"], str(max(ia - 1, 0))),
        (["Copy this number:", ("num", a, True)], a),
        ([("num", a, False), " is my number. Say it again."], a),
        (["Is", ("num", a, True), " even or odd?"], "even" if ia % 2 == 0 else "odd"),
        (["Which is larger,", ("num", a, True), " or", ("num", b, True), "?"], str(max(ia, ib))),
        (["My PIN is", ("num", a, True), ". What is my PIN?"], a),
        (["Count from", ("num", a, True), " to", ("num", str(ia + 3), True), "."], a),
        (["How many digits does", ("num", a, True), " have?"], str(len(a))),
        (["Write", ("num", a, True), " twice."], a + a),
    ]
    return rng.choice(forms)


def writer_text(rng: random.Random) -> tuple[list, str]:
    """A question whose answer is a run of digits (the model's own kind of digit output)."""
    a = _num(rng)
    ia = int(a)
    forms = [
        (["Repeat", ("num", a, True), "."], a),
        (["What comes after", ("num", a, True), "?"], str(ia + 1)),
        (["Copy this number:", ("num", a, True)], a),
        (["My PIN is", ("num", a, True), ". What is my PIN?"], a),
        (["Write", ("num", a, True), " twice."], a + a),
        (["Write the digits of", ("num", a, True), " in reverse order."], a[::-1]),
    ]
    return rng.choice(forms)


def question(segs: list) -> str:
    """The question as plain text, numbers in digits (what the task folders would score)."""
    return "".join(s if isinstance(s, str) else " " * s[2] + s[1] for s in segs)


def render(tok, ids: dict, segs: list, zel: bool) -> list[int]:
    """Token ids of the question segments, numbers in digits or in Zel (one token per digit)."""
    out = []
    for s in segs:
        if isinstance(s, str):
            out += tok(s, add_special_tokens=False).input_ids
            continue
        _, digits, spaced = s
        if zel:
            first = ids["space"] if spaced else ids["bare"]
            out += [first[int(digits[0])]] + [ids["space"][int(c)] for c in digits[1:]]
        else:
            out += ([ids["space_tok"]] if spaced else []) + [ids["digit"][int(c)] for c in digits]
    return out


def chat_ids(tok, question_ids: list[int]) -> tuple[list[int], list[int]]:
    """(prefix ids, suffix ids) of the chat template around the user's question."""
    mark = "QQQ"
    text = tok.apply_chat_template(messages(mark), add_generation_prompt=True, tokenize=False)
    pre, post = text.split(mark)
    return tok(pre, add_special_tokens=False).input_ids, tok(
        post, add_special_tokens=False
    ).input_ids


def parallel(tok, ids, segs, answer: str, zel_answer: bool):
    """Teacher ids (digits), student ids (Zel numbers in the question; the answer in Zel if
    ``zel_answer``) and the aligned (student position, teacher position) pairs from the first
    number on. Answer digits are bare tokens, so they align one to one."""
    pre, post = chat_ids(tok, [])
    t_q, s_q = render(tok, ids, segs, False), render(tok, ids, segs, True)
    ans_t = [ids["digit"][int(c)] for c in answer] if answer.isdigit() else None
    if ans_t is None:
        ans_t = tok(answer, add_special_tokens=False).input_ids
        ans_s = ans_t
    elif zel_answer:
        ans_s = [ids["bare"][int(answer[0])]] + [ids["space"][int(c)] for c in answer[1:]]
    else:
        ans_s = ans_t
    end = [tok.convert_tokens_to_ids("<|im_end|>")]
    teacher = pre + t_q + post + ans_t + end
    student = pre + s_q + post + ans_s + end
    # align from the end: every token after the question's last number matches one to one
    # (the suffix, chat tail and answer); inside the question, segment by segment
    pairs, tp, sp = [], len(pre), len(pre)
    for s in segs:
        if isinstance(s, str):
            n = len(tok(s, add_special_tokens=False).input_ids)
            pairs += [(sp + k, tp + k) for k in range(n)]
            tp, sp = tp + n, sp + n
        else:
            _, digits, spaced = s
            tp += 1 if spaced else 0
            pairs += [(sp + k, tp + k) for k in range(len(digits))]
            tp, sp = tp + len(digits), sp + len(digits)
    tail = len(post) + len(ans_t) + 1
    pairs += [(sp + k, tp + k) for k in range(tail - 1)]  # the last token predicts nothing
    first_num = min(p for p in pairs if student[p[0]] in ids["bare"] + ids["space"])
    pairs = [p for p in pairs if p[0] >= first_num[0]]
    answer_pos = [(sp + len(post) - 1 + k, tp + len(post) - 1 + k) for k in range(len(ans_t))]
    return teacher, student, pairs, answer_pos


def pad(rows: list[list[int]], fill: int):
    import torch

    width = max(map(len, rows))
    ids = torch.tensor([r + [fill] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask
