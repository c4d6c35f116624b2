"""Probes for the smollm2-experts design (docs/real_experts.md, "Vocabulary remap"): a Zel
language expert trained as a vocabulary remap by distillation on parallel text, merged with a
skill expert confined to blocks 5-14, scored on the target with the folders' protocol.

    python benchmarks/real_expert_probes.py [--out /tmp/zelremap_scratch] [--tables remap]
        [--reader-steps 120] [--reader-mse 1.0 --reader-from OUT/reader_s120_lr0.01.pt]
        [--writer-hidden teacher|student] [--lora-steps 40 --lora-lr 2e-3]
        [--export DIR | --lm-eval-grid DIR]

(docs/real_experts.md gives the commands behind its tables.) Stages, each cached under OUT
(delete OUT to retrain):

* ``skill``: skill C, PEFT LoRA rank 8 on blocks 5-14, 60 steps at 5e-4 on real_shift items;
* ``reader``: the input-embedding rows of the 20 Zel tokens (each syllable bare and with its
  leading space), trained so that the model's next-token distributions on a text with a number
  written in Zel match the frozen instruct model's on the same text with the number in digits
  (KL at every position from the number on; the positions align one to one: a Zel syllable and
  a digit are one token each, a digit run after a space is one space token more);
* ``writer``: the output-head rows (head untied) of the Zel and digit tokens, trained on the
  model's own digit answers: the teacher (instruct) reads a digit-producing prompt with its
  answer in digits, teacher-forced; the head rows must turn the hidden states into the
  teacher's distribution with each digit's mass moved to its Zel token (bare as the answer's
  first token, with a space after), at every position from the first number on. The hidden
  states are the teacher's own (``--writer-hidden teacher``: rewrite the digits the model
  produces) or the student's, which reads the answer in Zel through the reader (``student``);
* the language LoRA (``--lora-steps``): blocks 0-4 and 25-29 trained over the remap on the
  language task's own items, so that the expert answers "Write 472 in Zel." with the number;
* the tables: each expert, the remap, the oracle reader and writer, and task arithmetic
  merges (sum, a weight grid, a layer-group grid) on the three folders; ``--export`` writes the
  experts as model folders and ``--lm-eval-grid`` scores the weight grid through lm-eval.

Scoring follows the folders (chat template, system turn "Answer briefly.", zero-shot, greedy,
12 new tokens cut at <|im_end|> or a newline, exact match ignoring case) without lm-eval:
validation items 40-79, the grids on the target's search items 0-39. Seeded; one torch thread.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evomerge.zoo.real_tasks import ZEL, held_out, items, messages, sampler  # noqa: E402

DIGITS = "0123456789"


# ---------------------------------------------------------------- model and tokens


def load_base():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.model_refs import resolve_model_ref  # the zoo's folder (built if missing)

    folder = resolve_model_ref("zoo:smollm2/instruct")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return folder, tok, model


def untie(model) -> None:
    """Give the model its own output head (a copy of the tied embedding) so that input rows
    (reading) and output rows (writing) move separately."""
    import torch

    emb = model.get_input_embeddings().weight
    model.lm_head.weight = torch.nn.Parameter(emb.detach().clone())
    model.config.tie_word_embeddings = False


def token_ids(tok) -> dict:
    """Zel bare / spaced and digit token ids; each must be one token."""

    def one(s: str) -> int:
        ids = tok(s, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"{s!r} is {len(ids)} tokens"
        return ids[0]

    return {
        "digit": [one(d) for d in DIGITS],
        "bare": [one(z) for z in ZEL],
        "space": [one(" " + z) for z in ZEL],
        "space_tok": one(" "),
    }


# ---------------------------------------------------------------- parallel texts


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


# ---------------------------------------------------------------- training


def train_skill(folder: Path, tok, out: Path, steps=60, lr=5e-4, blocks=range(5, 15), seed=10):
    """Skill C as in the earlier probes: LoRA rank 8 on blocks 5-14; returns the merged delta."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from evomerge.zoo.real_experts import LORA_MODULES, fit_lora

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=list(LORA_MODULES),
        lora_dropout=0.0,
        layers_to_transform=list(blocks),
    )
    model = get_peft_model(model, cfg)
    draw = sampler({"shift": 1.0}, random.Random(seed))
    fit_lora(model, tok, draw, steps=steps, lr=lr, warmup=10, batch=8, report=_every(20, "skill"))
    merged = model.merge_and_unload().state_dict()
    delta = {k: merged[k] - base[k] for k in base if not torch.equal(merged[k], base[k])}
    torch.save(delta, out)
    return delta


def _every(n: int, label: str):
    """A training report: the loss every ``n`` steps."""

    def report(step: int, loss: float) -> None:
        if step % n == 0:
            print(f"  {label} step {step} loss {loss:.3f}", flush=True)

    return report


def train_language_lora(model, tok, out: Path, steps: int, lr: float, blocks, seed: int = 11):
    """A LoRA (rank 8, the seven projections of ``blocks``) trained on top of the remap (the
    model as it is: base + reader + writer, frozen) on the language task's own items, writing
    Zel numbers (answer-only loss); returns its merged delta."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from evomerge.zoo.real_experts import LORA_MODULES, fit_lora

    torch.manual_seed(seed)
    student = copy.deepcopy(model)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=list(LORA_MODULES),
        lora_dropout=0.0,
        layers_to_transform=list(blocks),
    )
    student = get_peft_model(student, cfg)
    student.train()
    draw = sampler({"zel_write": 2.0, "zel_digit": 1.0}, random.Random(seed))
    fit_lora(student, tok, draw, steps=steps, lr=lr, warmup=10, batch=8,
             report=_every(10, "language LoRA"))  # fmt: skip
    merged = student.merge_and_unload().state_dict()
    delta = {k: merged[k] - before[k] for k in before if not torch.equal(merged[k], before[k])}
    torch.save(delta, out)
    return delta


def _kl(student_logits, teacher_logp):
    import torch.nn.functional as F

    return F.kl_div(
        F.log_softmax(student_logits, -1), teacher_logp, log_target=True, reduction="sum"
    )


def _hidden_at(model, ids, mask, rows_pos, inputs_embeds=None):
    """Last hidden states (after the final norm) at the given (row, position) pairs: the head
    is applied only there, not at every position of the batch."""
    out = model.model(
        input_ids=None if inputs_embeds is not None else ids,
        inputs_embeds=inputs_embeds,
        attention_mask=mask,
    )
    b, p = zip(*rows_pos, strict=True)
    return out.last_hidden_state[list(b), list(p)]


def train_reader(model, tok, ids, steps, lr, mse: float = 0.0, seed: int = 20, batch: int = 8):
    """Zel input rows only (a 20-row tensor put into the input embeddings); teacher = the same
    frozen model on the digit text (the head is untied and frozen). Loss: KL of the next-token
    distributions at the aligned positions, plus ``mse`` times the mean squared difference of
    the last hidden states there (divided by the teacher's mean square: a relative error)."""
    import torch

    rng = random.Random(seed)
    skip = held_out()
    emb = model.get_input_embeddings().weight
    zel = ids["bare"] + ids["space"]
    slot = torch.full((emb.shape[0],), -1, dtype=torch.long)
    slot[torch.tensor(zel)] = torch.arange(len(zel))
    w = emb[torch.tensor(zel)].detach().clone().requires_grad_(True)
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([w], lr=lr)
    head = model.lm_head.weight
    for step in range(1, steps + 1):
        batch_rows = []
        while len(batch_rows) < batch:
            segs, ans = reader_text(rng)
            q = "".join(s if isinstance(s, str) else " " * s[2] + s[1] for s in segs)
            if q not in skip:
                batch_rows.append(parallel(tok, ids, segs, ans, zel_answer=False))
        t_ids, t_mask = pad([r[0] for r in batch_rows], tok.eos_token_id)
        s_ids, s_mask = pad([r[1] for r in batch_rows], tok.eos_token_id)
        s_pos = [(b, p[0]) for b, r in enumerate(batch_rows) for p in r[2]]
        t_pos = [(b, p[1]) for b, r in enumerate(batch_rows) for p in r[2]]
        with torch.no_grad():
            t_h = _hidden_at(model, t_ids, t_mask, t_pos)
            t_logp = torch.log_softmax(t_h @ head.T, -1)
        x = emb[s_ids]
        is_zel = slot[s_ids] >= 0
        x = torch.where(is_zel[..., None], w[slot[s_ids].clamp_min(0)], x)
        h = _hidden_at(model, None, s_mask, s_pos, inputs_embeds=x)
        loss = _kl(h @ head.T, t_logp) / len(s_pos)
        if mse:
            loss = loss + mse * ((h - t_h) ** 2).mean() / (t_h**2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == steps:
            print(f"  reader step {step} kl {loss.item():.4f}", flush=True)
    with torch.no_grad():
        emb[torch.tensor(zel)] = w.detach()


def moved_target(t_logp, ids):
    """The teacher's distribution with each digit's mass moved to its Zel token: bare at the
    answer's first token, spaced after."""
    import torch

    p = t_logp.exp().clone()
    for k in range(len(p)):
        form = ids["bare"] if k == 0 else ids["space"]
        p[k, torch.tensor(form)] += p[k, torch.tensor(ids["digit"])]
        p[k, torch.tensor(ids["digit"])] = 0
    return p.clamp_min(1e-12).log()


def writer_stats(model, tok, ids, n: int, on_teacher: bool, seed: int = 30, batch: int = 16):
    """What the head-row KL needs at every position from the question's first number to the
    answer's end, for ``n`` writer texts: the student's last hidden states (the blocks and
    input rows are fixed while the head rows train, so they are computed once), the target's
    probabilities on the 30 trained rows, and the constant rest of the KL. The target is the
    teacher's distribution with each digit's mass moved to its Zel token, bare at the answer's
    first token, spaced elsewhere; positions that predict no digit teach the rows to stay low.
    ``on_teacher``: the hidden states are the teacher's own on the digit text (the writer learns
    to rewrite the digits the model produces, whatever reads them back)."""
    import torch

    rng = random.Random(seed)
    skip = held_out()
    head = model.lm_head.weight
    rows = torch.tensor(ids["bare"] + ids["space"] + ids["digit"])
    texts = []
    while len(texts) < n:
        segs, ans = writer_text(rng)
        q = "".join(s if isinstance(s, str) else " " * s[2] + s[1] for s in segs)
        if q in skip:
            continue
        teacher, student, pairs, apos = parallel(tok, ids, segs, ans, zel_answer=True)
        if rng.random() < 0.5:  # the question in digits half the time, in Zel the other half
            student = teacher[: apos[0][1] + 1] + student[apos[0][0] + 1 :]
            pairs = [(tp, tp) for _, tp in pairs if tp >= pairs[0][1]]
            apos = [(tp, tp) for _, tp in apos]
        texts.append((teacher, student, pairs, apos[0][0]))
    out = {"h": [], "lse_fixed": [], "p_rows": [], "p_sum": [], "const": []}
    for i in range(0, n, batch):
        chunk = texts[i : i + batch]
        t_ids, t_mask = pad([r[0] for r in chunk], tok.eos_token_id)
        s_ids, s_mask = pad([r[1] for r in chunk], tok.eos_token_id)
        t_pos = [(b, p[1]) for b, r in enumerate(chunk) for p in r[2]]
        s_pos = [(b, p[0]) for b, r in enumerate(chunk) for p in r[2]]
        first = torch.tensor([p[0] == r[3] for r in chunk for p in r[2]])
        with torch.no_grad():
            t_logp = torch.log_softmax(_hidden_at(model, t_ids, t_mask, t_pos) @ head.T, -1)
            h = (
                _hidden_at(model, t_ids, t_mask, t_pos)
                if on_teacher
                else _hidden_at(model, s_ids, s_mask, s_pos)
            )
            p = t_logp.exp()
            digit_mass = p[:, ids["digit"]]
            p[:, ids["digit"]] = 0
            for form, at in (("bare", first), ("space", ~first)):
                k = at.nonzero().flatten()
                p[k[:, None], torch.tensor(ids[form])] += digit_mass[k]
            logq_fixed = h @ head.T
            logq_fixed[:, rows] = float("-inf")
            lse = torch.logsumexp(logq_fixed, -1)
            logq_fixed[:, rows] = 0
            logp = p.clamp_min(1e-12).log()
            p_rows = p[:, rows]
            rest = p.clone()
            rest[:, rows] = 0
            const = (rest * (logp - logq_fixed)).sum(-1) + (p_rows * logp[:, rows]).sum(-1)
        out["h"].append(h)
        out["lse_fixed"].append(lse)
        out["p_rows"].append(p_rows)
        out["p_sum"].append(p.sum(-1))
        out["const"].append(const)
    return {k: torch.cat(v) for k, v in out.items()}


def train_writer(model, tok, ids, steps, lr, on_teacher: bool, n_texts: int = 160):
    """Output-head rows of the Zel and digit tokens (the head untied), full batch. Only those
    30 logits move, so the KL is computed from them and the other tokens' fixed log-sum-exp
    (the same loss as over the whole vocabulary)."""
    import torch

    head = model.lm_head.weight
    st = writer_stats(model, tok, ids, n_texts, on_teacher)
    print(f"  writer: {len(st['h'])} positions", flush=True)
    rows = torch.tensor(ids["bare"] + ids["space"] + ids["digit"])
    w = head[rows].detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for step in range(1, steps + 1):
        moving = st["h"] @ w.T
        log_z = torch.logaddexp(st["lse_fixed"], torch.logsumexp(moving, -1))
        kl = st["const"] - (st["p_rows"] * moving).sum(-1) + st["p_sum"] * log_z
        loss = kl.mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps:
            print(f"  writer step {step} kl {loss.item():.4f}", flush=True)
    with torch.no_grad():
        head[rows] = w.detach()


# ---------------------------------------------------------------- scoring


def generate(model, tok, questions: list[str], max_new=12) -> list[str]:
    import torch

    tok.padding_side = "left"
    prompts = [
        tok.apply_chat_template(messages(q), add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    out = []
    for i in range(0, len(prompts), 20):
        enc = tok(prompts[i : i + 20], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.eos_token_id
            )
        for row in gen[:, enc.input_ids.shape[1] :]:
            text = tok.decode(row, skip_special_tokens=False)
            out.append(text.split("<|im_end|>")[0].split("\n")[0].strip())
    return out


def score(model, tok, task: str, split: str, against=None) -> tuple[float, list[str]]:
    test, _ = items(task)
    rows = test[:40] if split == "search" else test[40:80]
    answers = [against(a) if against else a for _, a in rows]
    got = generate(model, tok, [q for q, _ in rows])
    hits = sum(g.lower() == a.lower() for g, a in zip(got, answers, strict=True))
    return hits / len(rows), got[:3]


def from_zel(zel: str) -> str:
    return "".join(str(ZEL.index(w)) for w in zel.split())


# ---------------------------------------------------------------- merges


def with_deltas(model, base_sd: dict, deltas: list[tuple[dict, object]]) -> None:
    """model <- base + sum of w * delta; w is a number or a function of the tensor's name."""
    import torch

    sd = {k: v.clone() for k, v in base_sd.items()}
    for delta, w in deltas:
        for k, d in delta.items():
            sd[k] += (w(k) if callable(w) else w) * d
    with torch.no_grad():
        model.load_state_dict(sd)


def block_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def lora_eval(args, model, tok, base_sd, remap, remap_path, skill, table) -> None:
    """The remap expert plus a LoRA on blocks 0-4 and 25-29 trained on its own task: alone,
    summed with skill C, a weight grid and a layer-group grid (rows vs LoRA weights)."""
    import torch

    t0 = time.time()
    path = remap_path.with_stem(f"{remap_path.stem}_lora_s{args.lora_steps}_lr{args.lora_lr}")
    if path.exists():
        lora = torch.load(path)
    else:
        with_deltas(model, base_sd, [(remap, 1.0)])
        lora = train_language_lora(
            model, tok, path, args.lora_steps, args.lora_lr, [*range(0, 5), *range(25, 30)]
        )
    print(f"language LoRA: {len(lora)} tensors ({time.time() - t0:.0f} s)", flush=True)
    table("language = remap + LoRA", [(remap, 1.0), (lora, 1.0)])
    table("sum: skill C + language, w 1", [(skill, 1.0), (remap, 1.0), (lora, 1.0)])
    for ws, wl in [(0.5, 0.5), (1, 0.5), (0.5, 1), (1, 1.5), (1.5, 1)]:
        table(
            f"grid w_skill {ws} w_language {wl} (search items)",
            [(skill, ws), (remap, wl), (lora, wl)],
            split="search",
            tasks=("target",),
            extra=False,
        )
    for wr, wlo in [(1, 0), (1, 0.5), (1.5, 0.5), (1.5, 1), (1, 1.5), (1.5, 0)]:
        table(
            f"layer groups: skill 1, rows {wr}, LoRA {wlo} (search items)",
            [(skill, 1.0), (remap, wr), (lora, wlo)],
            split="search",
            tasks=("target",),
            extra=False,
        )


def export(args, model, tok, base_sd, skill, remap, remap_path) -> None:
    """Full float32 folders (untied head): evomerge takes their task vectors against the
    instruct folder (tied: its embedding stands in for the head, docs/real_models.md)."""
    import torch

    path = remap_path.with_stem(f"{remap_path.stem}_lora_s{args.lora_steps}_lr{args.lora_lr}")
    if path.exists():
        lora = torch.load(path)
    elif args.lora_steps:  # train it here: the export needs no tables (seeded as in lora_eval)
        with_deltas(model, base_sd, [(remap, 1.0)])
        lora = train_language_lora(
            model, tok, path, args.lora_steps, args.lora_lr, [*range(0, 5), *range(25, 30)]
        )
    else:
        raise SystemExit("--export: the language expert needs its LoRA; pass --lora-steps 40")
    for name, deltas in [("skill", [(skill, 1.0)]), ("language", [(remap, 1.0), (lora, 1.0)])]:
        with_deltas(model, base_sd, deltas)
        model.save_pretrained(args.export / name)
        tok.save_pretrained(args.export / name)
        print(f"wrote {args.export / name}", flush=True)


def lm_eval_grid(experts: Path, out: Path) -> None:
    """The weight grid of task arithmetic over the exported experts as evomerge recipes, scored
    by lm-eval through the experiment's fitness (benchmarks/real_search.py's scorer) on the
    target's search and validation items: the best simple merge, chosen on search items."""
    import yaml

    sys.path.insert(0, str(REPO / "benchmarks"))
    from real_search import score as lm_eval_score

    from evomerge.model_refs import resolve_model_ref

    base = resolve_model_ref("zoo:smollm2/instruct")
    for ws, wl in [(1, 1), (0.5, 0.5), (1, 0.5), (0.5, 1), (1, 1.5), (1.5, 1)]:
        recipe = {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            "models": [
                {"model": str(experts / "skill"), "parameters": {"weight": ws}},
                {"model": str(experts / "language"), "parameters": {"weight": wl}},
            ],
            "dtype": "float32",
        }
        path = out / f"ta_{ws}_{wl}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        got = lm_eval_score(path, {"target": "search"})["target"]
        val = lm_eval_score(path, {"target": "validation"})["target"]
        print(
            f"| task arithmetic w_skill {ws} w_language {wl} | search {got:.3f} | "
            f"validation {val:.3f} |",
            flush=True,
        )


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/zelremap_scratch"))
    ap.add_argument("--reader-steps", type=int, default=120)
    ap.add_argument("--reader-lr", type=float, default=1e-2)
    ap.add_argument("--reader-mse", type=float, default=0.0)
    ap.add_argument("--reader-from", type=Path, help="start from this cached reader")
    ap.add_argument("--writer-steps", type=int, default=300)
    ap.add_argument("--writer-lr", type=float, default=1e-2)
    ap.add_argument("--writer-hidden", choices=["student", "teacher"], default="teacher")
    ap.add_argument("--lora-steps", type=int, default=0, help="0: no language LoRA")
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument(
        "--export",
        type=Path,
        help="write skill C and the language expert "
        "(remap + LoRA) as model folders here for an evomerge search, then stop",
    )
    ap.add_argument("--tables", choices=["all", "remap"], default="all")
    ap.add_argument(
        "--lm-eval-grid",
        type=Path,
        metavar="EXPERTS",
        help="score the task-arithmetic grid over these exported experts with lm-eval",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.lm_eval_grid:
        lm_eval_grid(args.lm_eval_grid, args.out)
        return 0
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    folder, tok, model = load_base()
    ids = token_ids(tok)
    untie(model)
    model.eval()
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}

    t0 = time.time()
    skill_path = args.out / "skill_c.pt"
    skill = torch.load(skill_path) if skill_path.exists() else train_skill(folder, tok, skill_path)
    print(f"skill C: {len(skill)} tensors ({time.time() - t0:.0f} s)", flush=True)

    def delta_now() -> dict:
        sd = model.state_dict()
        return {k: sd[k] - base_sd[k] for k in base_sd if not torch.equal(sd[k], base_sd[k])}

    t0 = time.time()
    reader_path = args.out / f"reader_s{args.reader_steps}_lr{args.reader_lr}.pt"
    if args.reader_mse or args.reader_from:
        start = f"_from_{args.reader_from.stem}" if args.reader_from else ""
        reader_path = reader_path.with_stem(f"{reader_path.stem}_mse{args.reader_mse}{start}")
    if reader_path.exists():
        reader_only = torch.load(reader_path)
        with_deltas(model, base_sd, [(reader_only, 1.0)])
    else:
        if args.reader_from:
            with_deltas(model, base_sd, [(torch.load(args.reader_from), 1.0)])
        seed = 21 if args.reader_from else 20  # a continued reader sees new texts
        train_reader(model, tok, ids, args.reader_steps, args.reader_lr, args.reader_mse, seed)
        reader_only = delta_now()
        torch.save(reader_only, reader_path)
    print(f"reader: {sorted(reader_only)} ({time.time() - t0:.0f} s)", flush=True)
    t0 = time.time()
    tag = f"writer_s{args.writer_steps}_lr{args.writer_lr}_{args.writer_hidden}"
    remap_path = args.out / f"{reader_path.stem}_{tag}.pt"
    if remap_path.exists():
        remap = torch.load(remap_path)
    else:
        on_teacher = args.writer_hidden == "teacher"
        train_writer(model, tok, ids, args.writer_steps, args.writer_lr, on_teacher)
        remap = delta_now()
        torch.save(remap, remap_path)
    print(f"remap: {sorted(remap)} ({time.time() - t0:.0f} s)", flush=True)

    emb = base_sd["model.embed_tokens.weight"]
    rows = emb + reader_only["model.embed_tokens.weight"]
    cos = torch.nn.functional.cosine_similarity
    for form in ("bare", "space"):
        c = [cos(rows[ids[form][d]], emb[ids["digit"][d]], 0).item() for d in range(10)]
        c0 = [cos(emb[ids[form][d]], emb[ids["digit"][d]], 0).item() for d in range(10)]
        print(
            f"cosine of the {form} Zel input rows to their digit's row: "
            f"trained mean {sum(c) / 10:.3f} (min {min(c):.3f}), instruct mean {sum(c0) / 10:.3f}"
        )

    oracle = torch.zeros_like(emb)
    for d in range(10):
        for form in ("bare", "space"):
            oracle[ids[form][d]] = emb[ids["digit"][d]] - emb[ids[form][d]]
    oracle = {"model.embed_tokens.weight": oracle}
    # the oracle writer: the head's spaced Zel rows and digit rows swapped (a permutation of the
    # output vocabulary: the model writes " z_d" wherever it would write d)
    head0 = base_sd["lm_head.weight"]
    swap = torch.zeros_like(head0)
    for d in range(10):
        z, g = ids["space"][d], ids["digit"][d]
        swap[z], swap[g] = head0[g] - head0[z], head0[z] - head0[g]
    oracle_writer = {"lm_head.weight": swap}

    def table(label, deltas, split="validation", tasks=("target", "skill", "zel"), extra=True):
        with_deltas(model, base_sd, deltas)
        cells = []
        names = {"target": "real_target", "skill": "real_shift", "zel": "real_zel"}
        for t in tasks:
            s, ex = score(model, tok, names[t], split)
            cells.append(f"{t} {s:.3f}")
            if t == "target" and extra:
                s2, _ = score(model, tok, "real_target", split, against=from_zel)
                cells.append(f"target-in-digits {s2:.3f}")
            cells.append(f"e.g. {ex[0]!r}")
        print(f"| {label} | " + " | ".join(cells), flush=True)

    if args.export:
        export(args, model, tok, base_sd, skill, remap, remap_path)
        return 0
    t0 = time.time()
    if args.tables == "all":
        table("instruct", [])
        table("skill C", [(skill, 1.0)])
        table("reader only", [(reader_only, 1.0)])
        table("skill C + oracle reader", [(skill, 1.0), (oracle, 1.0)])
        table(
            "skill C + oracle reader + oracle writer",
            [(skill, 1.0), (oracle, 1.0), (oracle_writer, 1.0)],
        )
    table("remap (reader + writer)", [(remap, 1.0)])
    table("skill C + reader", [(skill, 1.0), (reader_only, 1.0)], tasks=("target",))
    table(
        "skill C + reader + oracle writer",
        [(skill, 1.0), (reader_only, 1.0), (oracle_writer, 1.0)],
        tasks=("target",),
    )
    table("sum: skill C + remap, w 1", [(skill, 1.0), (remap, 1.0)])
    for ws, wl in [(0.5, 0.5), (1, 0.5), (0.5, 1), (1, 1.5), (1.5, 1)]:
        table(
            f"grid w_skill {ws} w_remap {wl} (search items)",
            [(skill, ws), (remap, wl)],
            split="search",
            tasks=("target",),
            extra=False,
        )
    print(f"eval {time.time() - t0:.0f} s", flush=True)
    if args.lora_steps:
        lora_eval(args, model, tok, base_sd, remap, remap_path, skill, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
