"""An LM pool for the Frank-Wolfe benchmark: dictionary experts plus irrelevant fine-tunes.

Built with the LM zoo's pieces (``evomerge.zoo.lm``: tiny Llama, CPU training loop, character
tokenizer). The target skill is a made-up dictionary of ``4 * per_expert`` words (``key>`` ->
value). The base learns it partly (a short run on the whole dictionary, as the zoo notes
recommend, so experts stay close to it); relevant expert i is fine-tuned on quarter i; each
irrelevant model is fine-tuned on the same keys with a different random value permutation, so
it pulls exactly the weights the target needs the wrong way.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.zoo import lm as Z
from evomerge.zoo.tokenizer import build_tokenizer

SHAPE = Z.LMShape(layers=2, hidden=96, intermediate=256, heads=4, max_positions=16)


@dataclass(frozen=True)
class LMPool:
    base: str
    relevant: tuple[str, ...]
    irrelevant: tuple[str, ...]
    items: tuple[tuple[str, str], ...]  # the whole target dictionary (the fitness)
    proxy: str  # JSONL of the proxy subset (FW's labelled set)


def _words(rng: random.Random, n: int) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(string.ascii_lowercase) for _ in range(3)))
    return sorted(out)


def dictionary(per_expert: int = 25, seed: int = 0) -> list[tuple[str, str]]:
    """The target dictionary as (prompt, answer) pairs; deterministic in (per_expert, seed)."""
    rng = random.Random(seed)
    keys, values = _words(rng, 4 * per_expert), _words(rng, 4 * per_expert)
    rng.shuffle(values)
    return [(k + ">", v) for k, v in zip(keys, values, strict=True)]


def build_lm_pool(
    out: Path,
    *,
    n_irrelevant: int,
    per_expert: int = 12,
    seed: int = 0,
    base_steps: int = 120,
    expert_steps: int = 120,
    expert_lr: float = 1e-3,
) -> LMPool:
    out.mkdir(parents=True, exist_ok=True)
    items = dictionary(per_expert, seed)
    keys, values = [k[:-1] for k, _ in items], [v for _, v in items]
    tok = build_tokenizer()
    base = _trained(out / "base", None, items, base_steps, 3e-3, seed, tok)
    relevant = [
        _trained(
            out / f"expert_{i}",
            base,
            items[i * per_expert : (i + 1) * per_expert],
            expert_steps,
            expert_lr,
            seed + 1 + i,
            tok,
        )
        for i in range(4)
    ]
    irrelevant = []
    for j in range(n_irrelevant):
        perm = values[:]
        random.Random(1000 + seed + j).shuffle(perm)
        wrong = [(k + ">", v) for k, v in zip(keys, perm, strict=True)]
        irrelevant.append(
            _trained(out / f"noise_{j}", base, wrong, expert_steps, expert_lr, seed + 100 + j, tok)
        )
    proxy = out / "proxy.jsonl"
    picked = [it for i, it in enumerate(items) if i % 2 == 0]  # half of every quarter
    proxy.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in picked))
    return LMPool(base, tuple(relevant), tuple(irrelevant), tuple(items), str(proxy))


def _trained(path: Path, start: str | None, items, steps: int, lr: float, seed: int, tok) -> str:
    if (path / "model.safetensors").is_file():
        return str(path)
    from transformers import AutoModelForCausalLM

    if start is None:
        model = Z.new_model(SHAPE, len(tok), seed)
    else:
        model = AutoModelForCausalLM.from_pretrained(start, torch_dtype=torch.float32)
    Z.train(model, tok, lambda r: r.choice(items), Z.Phase(steps=steps, lr=lr, batch=32), seed)
    Z.save_lm(model, tok, path)
    return str(path)


_MODEL: dict[str, object] = {}


@torch.no_grad()
def exact_match_per_item(model, tok, items) -> list[float]:
    """1.0 where every answer character is the argmax under teacher forcing, else 0.0."""
    ids, lab = Z._batch(tok, list(items), True)
    pred = model(input_ids=ids).logits[:, :-1].argmax(-1)
    target = lab[:, 1:]
    return ((pred == target) | (target == -100)).all(dim=1).float().tolist()


def dictionary_fitness(model, tokenizer):
    """A python fitness (``fitness: {python: evomerge/zoo/lm_pool.py:dictionary_fitness}``):
    exact match on the benchmark's default 100-word target dictionary."""
    from evomerge.results import EvalResult, TaskScore

    per_item = exact_match_per_item(model, tokenizer, dictionary())
    return EvalResult({"dictionary": TaskScore.from_examples(per_item, metric="exact_match")})


@torch.no_grad()
def lm_exact_match(base: str, theta: dict, items) -> float:
    """Teacher-forced exact match (in %): every answer character is the argmax."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if base not in _MODEL:
        _MODEL.clear()
        _MODEL[base] = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()
    model = _MODEL[base]
    params = dict(model.named_parameters())
    for n, t in theta.items():
        if n in params:
            params[n].copy_(t)
    tok = AutoTokenizer.from_pretrained(base)
    per_item = exact_match_per_item(model, tok, items)
    return 100.0 * sum(per_item) / len(per_item)
