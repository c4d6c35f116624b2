"""The smollm2-experts' LoRA training loop (the skill adapter, the language expert's LoRA and
benchmarks/real_expert_probes.py): AdamW over a PEFT model's LoRA, linear warmup then a
constant rate, answer-only loss on chat-template prompts."""

from __future__ import annotations

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _batch(tok, draw, size: int):
    """Right-padded input ids, attention mask and labels (-100 except on the answer + end)."""
    import torch

    from evomerge.zoo.real_tasks import messages

    rows, labels = [], []
    for _ in range(size):
        q, a = draw()
        prompt = tok.apply_chat_template(messages(q), add_generation_prompt=True, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        a_ids = tok(a + tok.eos_token, add_special_tokens=False).input_ids
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def padded(xs, fill):
        return torch.tensor([x + [fill] * (width - len(x)) for x in xs])

    mask = padded([[1] * len(r) for r in rows], 0)
    return padded(rows, pad), mask, padded(labels, -100)


def fit_lora(model, tok, draw, *, steps: int, lr: float, warmup: int, batch: int, report) -> None:
    """The experts' training loop: AdamW over ``model``'s trainable parameters (a PEFT model's
    LoRA), linear warmup then a constant rate, ``batch`` items from ``draw`` a step,
    answer-only loss; ``report(step, loss)`` after each step."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step in range(1, steps + 1):
        for group in opt.param_groups:  # linear warmup, then constant
            group["lr"] = lr * min(1.0, step / warmup)
        ids, mask, labels = _batch(tok, draw, batch)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        report(step, loss.item())
