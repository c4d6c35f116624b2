"""Fast evaluators for zoo tasks, used by CPU searches instead of a full lm-eval run.

``evaluate_lm_task`` reproduces what lm-eval does for the zoo's ``generate_until`` task YAML —
greedy ``model.generate`` on the untouched prompt, decode without special tokens, cut at the
stop strings, exact match — but batches prompts of equal length so no padding is ever needed
(padding is the one thing that could make batched logits differ from lm-eval's). A test checks
that both give the same per-example results.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from evomerge.errors import UserInputError
from evomerge.fitness.result import TaskScore


def load_task_items(task_dir: str | Path) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of an lm-eval zoo task folder (its ``test.jsonl``)."""
    path = Path(task_dir) / "test.jsonl"
    if not path.is_file():
        raise UserInputError(f"{path}: task items not found; run evomerge.zoo.tasks.write_task_folders()")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["prompt"], r["answer"]) for r in rows]


def _max_gen_toks(task_dir: Path) -> int:
    import yaml

    for yml in sorted(task_dir.glob("*.yaml")):
        text = yml.read_text().replace("!function", "")  # only the generation kwargs matter here
        cfg = yaml.safe_load(text)
        return int(cfg["generation_kwargs"]["max_gen_toks"])
    raise UserInputError(f"{task_dir}: no task YAML found")


@torch.no_grad()
def generate_answers(
    model, tokenizer, prompts: Sequence[str], max_gen_toks: int, batch_size: int = 256
) -> list[str]:
    """Greedy continuations, cut at the first newline or EOS, as lm-eval's generate_until does."""
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    out: list[str] = [""] * len(prompts)
    eos = tokenizer.eos_token
    model.eval()
    for length, idxs in by_len.items():
        for start in range(0, len(idxs), batch_size):
            chunk = idxs[start : start + batch_size]
            ids = torch.tensor([encoded[i] for i in chunk], dtype=torch.long)
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_length=length + max_gen_toks,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
            for row, i in zip(gen, chunk):
                text = tokenizer.decode(row[length:].tolist(), skip_special_tokens=True)
                for stop in ("\n", eos):
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text
    return out


def evaluate_lm_task(model, tokenizer, task_dir: str | Path, limit: int | None = None) -> TaskScore:
    """Exact match of greedy answers on a zoo task folder's items (per-example 1.0/0.0)."""
    task_dir = Path(task_dir)
    items = load_task_items(task_dir)[:limit]
    answers = generate_answers(model, tokenizer, [p for p, _ in items], _max_gen_toks(task_dir))
    return TaskScore.from_examples(
        [float(a == ref) for a, (_, ref) in zip(answers, items)], metric="exact_match"
    )


def evaluate_digits(model, transform: str = "identity") -> TaskScore:
    """Accuracy on the digits test split under ``transform`` (per-example correctness)."""
    from evomerge.zoo.digits import digits_correct

    return TaskScore.from_examples(digits_correct(model, transform), metric="acc")
