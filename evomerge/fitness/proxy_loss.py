"""Frank-Wolfe merging's objective: a loss on a small proxy set (``driver.options.proxy``).

FW-Merging (Chen et al., ICCV 2025) minimises cross-entropy on a small labelled proxy set, or
the prediction entropy on unlabelled inputs (AdaMerging's objective). Two model families are
supported: the ``digits`` zoo's MLP classifiers and causal LMs (``lm``: prompt/answer pairs from
a JSONL file, loss on the answer tokens only). The gradient job
(``evomerge.workers.gradient_job``) differentiates ``ProxySpec.loss`` in a worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evomerge.errors import UserInputError
from evomerge.recipe import format_validation_error


class ProxySpec(BaseModel):
    """``kind``: digits | lm; ``loss``: cross_entropy (labelled) | entropy (unlabelled)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["digits", "lm"] = "digits"
    loss: Literal["cross_entropy", "entropy"] = "cross_entropy"
    n: int = Field(128, ge=1)
    seed: int = 0
    # digits: the target task(s); several transforms make a multi-task proxy (n examples each)
    transform: str | list[str] = "identity"
    data: str | None = None  # lm: JSONL with one {"prompt": ..., "answer": ...} per line
    prompt_field: str = "prompt"
    answer_field: str = "answer"

    @classmethod
    def parse(cls, data: Any) -> ProxySpec:
        if isinstance(data, ProxySpec):
            return data
        try:
            spec = cls.model_validate(data or {})
        except ValidationError as err:
            raise UserInputError(
                format_validation_error(err, "driver.options.proxy", cls)
            ) from None
        if spec.kind == "lm" and not spec.data:
            raise UserInputError("driver.options.proxy.data: give a JSONL of prompt/answer pairs")
        return spec

    label: ClassVar[str] = "proxy loss"  # names the objective in a failed gradient's message

    def value(self, model: torch.nn.Module, step: int, base_folder: str) -> torch.Tensor:
        """The proxy loss of ``model`` (the same batch at every step)."""
        return proxy_loss(model, self, base_folder)


def proxy_loss(model: torch.nn.Module, spec: ProxySpec, base_folder: str) -> torch.Tensor:
    if spec.kind == "digits":
        x, y = _digits_batch(spec)
        logits = model(x)
        labels = y
    else:
        ids, labels = _lm_batch(spec, base_folder)
        logits = model(input_ids=ids).logits[:, :-1]
        labels = labels[:, 1:]
        keep = labels != -100
        logits, labels = logits[keep], labels[keep]
    if spec.loss == "cross_entropy":
        return torch.nn.functional.cross_entropy(logits, labels)
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def _digits_batch(spec: ProxySpec) -> tuple[torch.Tensor, torch.Tensor]:
    from evomerge.zoo.digits import digits_data

    names = [spec.transform] if isinstance(spec.transform, str) else list(spec.transform)
    xs, ys = [], []
    for i, name in enumerate(names):
        x, y = digits_data("train", name)
        gen = torch.Generator().manual_seed(spec.seed * 1000 + i)
        idx = torch.randperm(len(y), generator=gen)[: spec.n]
        xs.append(x[idx])
        ys.append(y[idx])
    return torch.cat(xs), torch.cat(ys)


def _lm_batch(spec: ProxySpec, base_folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoTokenizer

    path = Path(spec.data or "")
    if not path.is_file():
        raise UserInputError(f"driver.options.proxy.data: {path} not found")
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        item = json.loads(line)
        try:
            rows.append((str(item[spec.prompt_field]), str(item[spec.answer_field])))
        except KeyError as err:
            raise UserInputError(
                f"{path}:{i + 1}: no field {err}; set proxy.prompt_field/answer_field"
            ) from None
        if len(rows) == spec.n:
            break
    tok = AutoTokenizer.from_pretrained(base_folder)
    seqs, labels = [], []
    for prompt, answer in rows:
        p = tok.encode(prompt, add_special_tokens=False)
        a = tok.encode(answer + "\n", add_special_tokens=False)
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)  # right padding: causal attention never sees it
        lab[i, : len(lb)] = torch.tensor(lb)
    return ids, lab
