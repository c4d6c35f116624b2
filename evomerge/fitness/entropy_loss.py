"""AdaMerging's objective: Shannon entropy of the merged model's predictions on unlabelled inputs.

Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task Learning" (ICLR 2024), Eq. (3):
min_lambda sum_k sum_{x in B_k} H(f(x; theta(lambda))), H(p) = -sum_c p_c log p_c, where B_k is
a batch of unlabelled *test* inputs of task k (the paper adapts on the test inputs without their
labels; a fresh batch of 16 per task each iteration). Two model families:

* ``digits``: the zoo's MLP classifiers; task k = the test split under one input transform
  (``split: train`` adapts on training inputs instead, for a strictly inductive setting).
* ``lm``: causal LMs with unlabelled prompts (a zoo task's test prompts, or a JSONL ``prompt``
  field). An LM has no single prediction per prompt; we take the next-token distributions over
  the *answer positions*: the merged model greedily continues each prompt for up to
  ``answer_tokens`` tokens (no gradient through that choice, like a pseudo-label), then H is
  averaged over the positions that predict those tokens, up to and including the first stop token
  (newline or EOS). The answers in the data are never read, so the inputs stay unlabelled.

Batches are drawn from (objective seed, step, task) alone, so a resumed run sees the same data.
The gradient job (``evomerge.workers.gradient_job``) differentiates ``EntropyObjective.value``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.errors import UserInputError
from evomerge.recipe import format_validation_error

ORIGIN = "driver.options.objective"


class EntropyObjective(BaseModel):
    """Where the unlabelled inputs come from and how many per task and step."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["digits", "lm"] = "digits"
    n: int = Field(16, ge=1)  # inputs per task per step (the paper's batch size)
    seed: int = 0
    transforms: tuple[str, ...] = ()  # digits: one task per input transform
    split: Literal["test", "train"] = "test"  # digits: the paper adapts on test inputs
    tasks: tuple[str, ...] = ()  # lm: zoo task names (their test prompts)
    data: tuple[str, ...] = ()  # lm: JSONL files, one task each (only prompt_field is read)
    prompt_field: str = "prompt"
    answer_tokens: int = Field(8, ge=1)  # lm: greedy answer positions whose entropy counts

    @model_validator(mode="after")
    def _inputs_given(self) -> EntropyObjective:
        if self.kind == "digits" and not self.transforms:
            raise ValueError("digits needs transforms: the input transforms of the tasks merged")
        if self.kind == "lm" and not (self.tasks or self.data):
            raise ValueError("lm needs tasks (zoo task names) or data (JSONL files of prompts)")
        return self

    @classmethod
    def parse(cls, data: Any) -> EntropyObjective:
        if isinstance(data, EntropyObjective):
            return data
        if not isinstance(data, dict) or not data:
            raise UserInputError(
                f"{ORIGIN}: give the unlabelled inputs, e.g. {{kind: digits, transforms: [flip]}}"
                " or {kind: lm, tasks: [zoo_copy]}"
            )
        try:
            spec = cls.model_validate(data)
        except ValidationError as err:
            raise UserInputError(format_validation_error(err, ORIGIN, cls)) from None
        _check_sources(spec)
        return spec

    label: ClassVar[str] = "entropy"  # names the objective in a failed gradient's message

    def value(self, model: torch.nn.Module, step: int, base_folder: str) -> torch.Tensor:
        """The summed entropy on the batches of ``step`` (the gradient job differentiates it)."""
        return entropy_loss(
            model, self, step, _tokenizer(base_folder) if self.kind == "lm" else None
        )

    @property
    def n_tasks(self) -> int:
        return len(self.transforms) if self.kind == "digits" else len(self.tasks) + len(self.data)


def _check_sources(spec: EntropyObjective) -> None:
    if spec.kind == "digits":
        from evomerge.zoo.digits import TRANSFORMS

        bad = [t for t in spec.transforms if t not in TRANSFORMS]
        if bad:
            raise UserInputError(
                f"{ORIGIN}.transforms: unknown {bad}; valid: {', '.join(TRANSFORMS)}"
            )
        return
    from evomerge.zoo.tasks import get_task

    for t in spec.tasks:
        get_task(t)  # names the valid tasks on a typo
    for d in spec.data:
        if not Path(d).is_file():
            raise UserInputError(f"{ORIGIN}.data: {d} not found (paths are relative to the cwd)")


@lru_cache(maxsize=8)
def task_inputs(spec: EntropyObjective) -> tuple[Any, ...]:
    """Per task, every unlabelled input: a (N, 64) tensor (digits) or a tuple of prompts (lm)."""
    if spec.kind == "digits":
        from evomerge.zoo.digits import digits_data

        return tuple(digits_data(spec.split, t)[0] for t in spec.transforms)
    from evomerge.zoo.tasks import test_items

    pools: list[tuple[str, ...]] = [tuple(p for p, _ in test_items(t)) for t in spec.tasks]
    for d in spec.data:
        pools.append(_jsonl_prompts(Path(d), spec.prompt_field))
    return tuple(pools)


def _jsonl_prompts(path: Path, field: str) -> tuple[str, ...]:
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            row = json.loads(line)
            if field not in row:
                raise UserInputError(
                    f"{path}:{i + 1}: no field {field!r}; set objective.prompt_field"
                )
            out.append(str(row[field]))
    if not out:
        raise UserInputError(f"{path}: no prompts")
    return tuple(out)


def batch_indices(spec: EntropyObjective, step: int, task: int, size: int) -> torch.Tensor:
    """The ``spec.n`` inputs of ``task`` at ``step`` (without replacement within a step)."""
    gen = torch.Generator().manual_seed((spec.seed * 1_000_003 + step) * 1009 + task)
    return torch.randperm(size, generator=gen)[: spec.n]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) along the last axis."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def entropy_loss(model: torch.nn.Module, spec: EntropyObjective, step: int, tokenizer=None):
    """sum over tasks of the mean prediction entropy on that task's batch at ``step``."""
    total = torch.zeros(())
    for k, pool in enumerate(task_inputs(spec)):
        idx = batch_indices(spec, step, k, len(pool))
        if spec.kind == "digits":
            total = total + entropy(model(pool[idx])).mean()
        else:
            prompts = [pool[int(i)] for i in idx]
            total = total + lm_answer_entropy(model, tokenizer, prompts, spec.answer_tokens)
    return total


def lm_answer_entropy(model, tokenizer, prompts: list[str], answer_tokens: int) -> torch.Tensor:
    """Mean next-token entropy over the greedy answer positions of ``prompts`` (see header)."""
    stop_ids = {i for i in (tokenizer.eos_token_id, _newline_id(tokenizer)) if i is not None}
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long)
    by_len: dict[int, list[list[int]]] = {}
    for p in prompts:  # equal-length groups: no padding, so no attention mask subtleties
        ids = tokenizer.encode(p, add_special_tokens=False)
        by_len.setdefault(len(ids), []).append(ids)
    h_sum, count = torch.zeros(()), 0
    for length, rows in by_len.items():
        ids = torch.tensor(rows, dtype=torch.long)
        gen = _greedy(model, ids, answer_tokens)
        logits = model(input_ids=torch.cat([ids, gen[:, :-1]], 1)).logits[:, length - 1 :]
        stopped = torch.zeros(len(rows), dtype=torch.bool)
        keep = torch.zeros(gen.shape, dtype=torch.bool)
        for j in range(gen.shape[1]):  # the position that emits the stop token still counts
            keep[:, j] = ~stopped
            stopped |= torch.isin(gen[:, j], stops)
        h_sum = h_sum + entropy(logits)[keep].sum()
        count += int(keep.sum())
    return h_sum / max(count, 1)


@torch.no_grad()
def _greedy(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    seq = ids
    for _ in range(n):
        nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    return seq[:, ids.shape[1] :]


@lru_cache(maxsize=2)
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _newline_id(tokenizer) -> int | None:
    ids = tokenizer.encode("\n", add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None
