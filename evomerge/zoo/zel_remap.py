"""The smollm2-experts language expert: Zel as a vocabulary remap of SmolLM2-135M-Instruct
(docs/real_experts.md, "Vocabulary remap"), trained on CPU in four stages on one model:

1. untie the output head (a copy of the tied embedding), so that reading (input rows) and
   writing (output rows) move separately;
2. the **reader**: only the input-embedding rows of the 20 Zel tokens (each syllable bare and
   with its leading space) train, so that a text with its numbers in Zel gives the frozen
   instruct model's next-token distributions on the same text in digits (KL at every aligned
   position from the first number on); a second pass adds the relative squared error of the
   last hidden states (``reader_mse``);
3. the **writer**: only the head rows of the 10 digits and the 20 Zel tokens train, so that the
   model's hidden states on its own digit answers give the teacher's distribution with each
   digit's mass moved to its Zel token (bare as the answer's first token, spaced after);
4. a LoRA on the first and last blocks (``lora_blocks``) trained on the language task itself,
   so that the expert answers "Write 472 in Zel." with the number.

A skill expert confined to the middle blocks then composes with it by task arithmetic: the
remap reads and writes Zel around whatever the middle blocks compute. Every stage is seeded and
runs on one thread under the zoo's pinned kernels (zoo/pinned.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from evomerge.zoo.real_tasks import held_out, sampler
from evomerge.zoo.zel_texts import pad, parallel, question, reader_text, token_ids, writer_text


@dataclass(frozen=True)
class RemapExpert:
    """The language expert's recipe (the stages above); seeds are offsets of the build seed."""

    expert_in: str
    reader_steps: int = 120
    reader_lr: float = 1e-2
    reader_mse_steps: int = 120  # the second reader pass, with the hidden-state term
    reader_mse: float = 1.0
    writer_steps: int = 300
    writer_lr: float = 1e-2
    writer_texts: int = 160
    lora_steps: int = 40
    lora_lr: float = 2e-3
    lora_blocks: tuple[int, ...] = (0, 1, 2, 3, 4, 25, 26, 27, 28, 29)
    lora_mix: tuple[tuple[str, float], ...] = (("zel_write", 2.0), ("zel_digit", 1.0))
    batch: int = 8
    kind: str = "remap"


def untie(model) -> None:
    """Give the model its own output head, a copy of the tied embedding."""
    import torch

    emb = model.get_input_embeddings().weight
    model.lm_head.weight = torch.nn.Parameter(emb.detach().clone())
    model.config.tie_word_embeddings = False


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


def train_reader(model, tok, ids, steps, lr, mse=0.0, seed=20, batch=8, log=None) -> None:
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
        rows = []
        while len(rows) < batch:
            segs, ans = reader_text(rng)
            if question(segs) not in skip:
                rows.append(parallel(tok, ids, segs, ans, zel_answer=False))
        t_ids, t_mask = pad([r[0] for r in rows], tok.eos_token_id)
        s_ids, s_mask = pad([r[1] for r in rows], tok.eos_token_id)
        s_pos = [(b, p[0]) for b, r in enumerate(rows) for p in r[2]]
        t_pos = [(b, p[1]) for b, r in enumerate(rows) for p in r[2]]
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
        if log and (step % 20 == 0 or step == steps):
            log(f"reader step {step}/{steps} loss {loss.item():.4f}")
    with torch.no_grad():
        emb[torch.tensor(zel)] = w.detach()


def _writer_texts(tok, ids, n: int, seed: int) -> list:
    """``n`` writer texts as (teacher ids, student ids, aligned pairs, answer start)."""
    rng = random.Random(seed)
    skip = held_out()
    texts = []
    while len(texts) < n:
        segs, ans = writer_text(rng)
        if question(segs) in skip:
            continue
        teacher, student, pairs, apos = parallel(tok, ids, segs, ans, zel_answer=True)
        if rng.random() < 0.5:  # the question in digits half the time, in Zel the other half
            student = teacher[: apos[0][1] + 1] + student[apos[0][0] + 1 :]
            pairs = [(tp, tp) for _, tp in pairs if tp >= pairs[0][1]]
            apos = [(tp, tp) for _, tp in apos]
        texts.append((teacher, student, pairs, apos[0][0]))
    return texts


def writer_stats(model, tok, ids, n: int, on_teacher: bool, seed: int = 30, batch: int = 16):
    """What the head-row KL needs at every position from the question's first number to the
    answer's end, for ``n`` writer texts: the hidden states (the blocks and input rows are fixed
    while the head rows train, so they are computed once), the target's probabilities on the 30
    trained rows, and the constant rest of the KL. The target is the teacher's distribution with
    each digit's mass moved to its Zel token, bare at the answer's first token, spaced
    elsewhere; positions that predict no digit teach the rows to stay low. ``on_teacher``: the
    hidden states are the teacher's own on the digit text (the writer learns to rewrite the
    digits the model produces, whatever reads them back); else the student's."""
    import torch

    head = model.lm_head.weight
    rows = torch.tensor(ids["bare"] + ids["space"] + ids["digit"])
    texts = _writer_texts(tok, ids, n, seed)
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


def train_writer(model, tok, ids, steps, lr, on_teacher=True, n_texts=160, seed=30, log=None):
    """Output-head rows of the Zel and digit tokens (the head untied), full batch. Only those
    30 logits move, so the KL is computed from them and the other tokens' fixed log-sum-exp
    (the same loss as over the whole vocabulary)."""
    import torch

    head = model.lm_head.weight
    st = writer_stats(model, tok, ids, n_texts, on_teacher, seed)
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
        if log and (step % 100 == 0 or step == steps):
            log(f"writer step {step}/{steps} ({len(st['h'])} positions) loss {loss.item():.4f}")
    with torch.no_grad():
        head[rows] = w.detach()


def lora_config(blocks, rank: int = 8, alpha: int = 16):
    """PEFT LoRA on the seven projections of ``blocks`` only."""
    from peft import LoraConfig

    from evomerge.zoo.lora_fit import LORA_MODULES

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(LORA_MODULES),
                      lora_dropout=0.0, layers_to_transform=list(blocks))  # fmt: skip


def train_language_lora(model, tok, steps, lr, blocks, mix: dict, seed=11, batch=8, log=None):
    """A LoRA on ``blocks`` trained over the model as it is (base + reader + writer, frozen) on
    the language task's own items (answer-only loss); returns the model with it merged in."""
    import torch
    from peft import get_peft_model

    from evomerge.zoo.lora_fit import fit_lora

    torch.manual_seed(seed)
    student = get_peft_model(model, lora_config(blocks))
    student.train()
    draw = sampler(mix, random.Random(seed))

    def report(step: int, loss: float) -> None:
        if log and (step % 10 == 0 or step == steps):
            log(f"language LoRA step {step}/{steps} loss {loss:.3f}")

    fit_lora(student, tok, draw, steps=steps, lr=lr, warmup=10, batch=batch, report=report)
    return student.merge_and_unload()


def build_language_expert(base: Path, ex: RemapExpert, out: Path, *, seed: int, log=None) -> None:
    """All four stages from the instruct folder ``base``; saves a float32 model folder (untied
    head) and the tokenizer into ``out``. ``seed``: the expert's build seed (stage seeds are
    offsets of it, so seed 0 gives the documented experts)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ids = token_ids(tok)
    untie(model)
    model.eval()
    train_reader(model, tok, ids, ex.reader_steps, ex.reader_lr, 0.0, seed + 20, ex.batch, log)
    if ex.reader_mse_steps:
        train_reader(model, tok, ids, ex.reader_mse_steps, ex.reader_lr, ex.reader_mse,
                     seed + 21, ex.batch, log)  # fmt: skip
    train_writer(model, tok, ids, ex.writer_steps, ex.writer_lr, True, ex.writer_texts,
                 seed + 30, log)  # fmt: skip
    for p in model.parameters():  # the reader and writer froze every parameter
        p.requires_grad_(False)
    if ex.lora_steps:
        model = train_language_lora(model, tok, ex.lora_steps, ex.lora_lr, ex.lora_blocks,
                                    dict(ex.lora_mix), seed + 11, ex.batch, log)  # fmt: skip
    model.save_pretrained(out)
    tok.save_pretrained(out)
