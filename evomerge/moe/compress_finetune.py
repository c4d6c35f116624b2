"""The fine-tuning during which MC-SMoE prunes its compressed experts (Li et al., ICLR 2024,
arXiv:2310.01334; the authors' ``losparse-downstream.py``, read, not copied).

As the authors' script: the student is the merged model with its experts factored
(``compress.py``), the teacher the original model before merging; the loss is the student's
cross-entropy plus 0.2 times the KL divergence from the teacher's to the student's next-token
distributions at temperature 2 (summed over a line's tokens, averaged over lines, no T^2
factor); routers are frozen and the load-balancing loss is off; every other parameter trains
(attention, norms, embeddings, L, R, S); AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.01)
with linear warmup and decay; after every optimizer step the pruner updates its scores and,
on the cubic schedule, masks the rows of S (``compress_prune.py``). The student runs in eval
mode, as theirs (no dropout).

Data: a text file, one sample a line (for lm-moe the zoo's training mixture, never a test
prompt), each line followed by a newline and scored on every token: a text file has no
prompt/answer split, so the cross-entropy covers the whole line (the authors fine-tune on
their task's labelled examples).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from evomerge.moe.compress import CompressOptions, factorize_block, unfactorize_block
from evomerge.moe.compress_prune import RowPruner, keep_fraction
from evomerge.moe.experts import moe_blocks

KD_LAMBDA, KD_TEMPERATURE = 0.2, 2.0  # the authors' defaults for the compression stage
WARMUP_SHARE = 1 / 50  # lr warmup = the pruner's warmup unit (the authors' COPA run: 50 of 2500)


def _batch(tok, lines: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels (-100 on padding)."""
    rows = [tok.encode(s + "\n", add_special_tokens=False) for s in lines]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.tensor(r)
    return ids, labels


def distillation_loss(student_logits, teacher_logits, labels) -> torch.Tensor:
    """KL(teacher_T || student_T) over the non-padding positions, summed per line, mean over
    lines (the authors' ``KLDivLoss(reduction="batchmean")``)."""
    real = (labels != -100)[..., None]
    log_p = F.log_softmax(student_logits / KD_TEMPERATURE, dim=-1)
    q = F.softmax(teacher_logits / KD_TEMPERATURE, dim=-1)
    kl = (q * (q.clamp_min(1e-30).log() - log_p) * real).sum()
    return kl / student_logits.shape[0]


def compress_and_finetune(
    student, teacher, tok, lines: Sequence[str], opts: CompressOptions, compress: bool = True
):
    """Factor ``student``'s experts, fine-tune it while pruning, write the dense products back
    (``compress=False``: the same fine-tuning of the dense merged experts, nothing factored or
    pruned; the benchmark's control for what fine-tuning alone does).

    Returns ``(factors, pruner, log)``: per MoE layer its ``FactoredExperts`` (L, R and the
    masked S, detached), the pruner (its row masks), and the loss at a few steps."""
    blocks = moe_blocks(student)
    factored = [factorize_block(b, opts.rank) for b in blocks] if compress else []
    for b in blocks:
        b.gate.weight.requires_grad_(False)  # the authors freeze the routers
    sparse = {f"{i}.{m}": f.sparse[m] for i, f in enumerate(factored) for m in f.sparse}
    pruner = RowPruner(sparse)
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for n, p in student.named_parameters() if p.requires_grad and "norm" not in n]
    rest = [p for p in params if all(p is not d for d in decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
        lr=opts.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = max(1, round(opts.steps * WARMUP_SHARE))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda t: (
            (t + 1) / warmup
            if t < warmup
            else max(0.0, (opts.steps - t) / max(1, opts.steps - warmup))
        ),
    )
    rng = random.Random(f"mc-smoe-compress:{opts.seed}")
    student.eval()  # no dropout, as the authors' distillation wrapper
    teacher.eval()
    log = []
    for step in range(opts.steps):
        ids, labels = _batch(tok, [rng.choice(lines) for _ in range(opts.batch)])
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, use_cache=False).logits
        out = student(input_ids=ids, labels=labels, use_cache=False)
        loss = out.loss + KD_LAMBDA * distillation_loss(out.logits, teacher_logits, labels)
        loss.backward()
        opt.step()
        pruner.update()
        keep, mask = keep_fraction(step, opts.steps, 1.0 - opts.sparsity, warmup)
        if mask and compress:
            pruner.mask(keep)
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step in (0, opts.steps // 2, opts.steps - 1):
            kept = round(keep, 4) if compress else 1.0
            log.append({"step": step, "loss": round(loss.item(), 4), "keep": kept})
    for b in blocks:
        if compress:
            unfactorize_block(b)
        b.gate.weight.requires_grad_(True)
    for f in factored:
        f.requires_grad_(False)
    return factored, pruner, log
