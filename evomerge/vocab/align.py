"""Embedding and LM-head rows in the merged vocabulary's order, per model, before merging.

mergekit 0.1.5's ``PermutedVocabulary`` (``mergekit/tokenizer/embed.py``): each model's tensor
is rebuilt with one row per output token, then the operator merges the rebuilt tensors as usual.

* A token every model of the tensor has: each model keeps its own row.
* Otherwise (or when ``tokens.<t>.force`` is set) the missing rows get one shared row: the one
  ``tokens.<t>.source`` names (a model's row of that token, another token's row, zeros), else
  by default the only model that has it, else the base model's row, else the mean of the
  models that have it, else zeros. A model that has the token keeps its own row unless forced.
* Rows past the vocabulary (``pad_to_multiple_of``) are each model's mean row.

mergekit loops over tokens in Python per tensor; here each rule is one gather over the token ids
that need it, and the plan (which row from where) is built once per set of models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from evomerge.errors import UserInputError
from evomerge.vocab.build import BuiltVocab
from evomerge.vocab.config import ModelTokenEmbedding, TokenizerConfig, ZeroEmbedding


@dataclass(frozen=True)
class RowPlan:
    """For one tuple of models: ids (M, n) in each model (-1 none), which tokens take a shared
    row (``need``), and where that row comes from."""

    ids: torch.Tensor
    forced: torch.Tensor  # (n,) bool
    need: torch.Tensor  # token ids taking the shared row where a model lacks them (or forced)
    donor: torch.Tensor  # (len(need),) model position whose row is shared, -1 none
    donor_row: torch.Tensor  # (len(need),) that row's id in the donor
    mean: torch.Tensor  # (len(need),) bool: the mean over the models that have the token


@dataclass
class Vocab:
    """The merged vocabulary of one recipe and how each model's rows map onto it."""

    built: BuiltVocab
    cfg: TokenizerConfig
    base_model: str | None  # the recipe's base_model: its row wins when several models have one
    size: int  # output rows: the vocabulary padded to pad_to_multiple_of
    key: str = ""  # identifies the vocabulary (and its sources' files) across candidates
    _plans: dict[tuple[str, ...], RowPlan] = field(default_factory=dict, repr=False)

    @property
    def tokenizer(self):  # noqa: ANN201 - a transformers tokenizer
        return self.built.tokenizer

    @property
    def n_tokens(self) -> int:
        return len(self.built.vocab)

    def align(
        self, task, tensors: list[torch.Tensor], base: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The engine's hook: a vocabulary task's loaded (tensors, base), rows realigned."""
        refs = [r for r, _ in task.inputs] + ([task.base[0]] if task.base else [])
        rows = self.rows(refs, [*tensors, *([base] if base is not None else [])], task.name)
        return rows[: len(tensors)], rows[-1] if base is not None else None

    def rows(self, refs: list[str], ts: list[torch.Tensor], name: str) -> list[torch.Tensor]:
        key = tuple(refs)
        if key not in self._plans:
            self._plans[key] = self._plan(refs)
        plan = self._plans[key]
        shared = _shared_rows(plan, ts, name, refs)
        return [self._one(plan, i, t, shared) for i, t in enumerate(ts)]

    def _one(self, plan: RowPlan, i: int, t: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        n = self.n_tokens
        out = t.new_zeros((self.size, *t.shape[1:]))
        ids = plan.ids[i]
        own = (ids >= 0) & ~plan.forced
        out[:n][own] = t[ids[own]]
        take = ~own[plan.need]
        out[plan.need[take]] = shared[take]
        if self.size > n:  # as mergekit: padding rows are the mean embedding
            out[n:] = out[:n].mean(dim=0)
        return out

    # ---- where the shared rows come from ------------------------------------------------------
    def _plan(self, refs: list[str]) -> RowPlan:
        ids = torch.stack([self.built.index[r] for r in refs])
        present = ids >= 0
        count = present.sum(0)
        forced = torch.zeros(self.n_tokens, dtype=torch.bool)
        for text, tc in self.cfg.token_configs.items():
            forced[self.built.vocab[text]] = tc.force
        need = torch.nonzero((count < len(refs)) | forced).flatten()
        donor = torch.full((len(need),), -1, dtype=torch.int64)
        first = present.to(torch.int8).argmax(0)  # (the first model that has the token)
        one = count[need] == 1
        donor[one] = first[need][one]
        mean = count[need] > 1
        if self.base_model in refs:
            b = refs.index(self.base_model)
            in_base = present[b, need] & mean
            donor[in_base] = b
            mean = mean & ~in_base
        donor_row = torch.where(donor >= 0, ids[donor.clamp(min=0), need], 0)
        plan = RowPlan(ids, forced, need, donor, donor_row, mean)
        return self._configured(plan, refs)

    def _configured(self, plan: RowPlan, refs: list[str]) -> RowPlan:
        """Rows ``tokenizer.tokens`` names override the default rule."""
        pos = {int(t): k for k, t in enumerate(plan.need)}
        for text, tc in self.cfg.token_configs.items():
            k = pos.get(self.built.vocab[text])
            if k is None or tc.source is None:
                continue  # every model has it and none is forced; or the default rule
            plan.mean[k] = False
            src = tc.source
            if isinstance(src, ZeroEmbedding):
                plan.donor[k] = -1
                continue
            model = src.model if isinstance(src, ModelTokenEmbedding) else src
            if model not in refs:
                raise UserInputError(
                    f"tokenizer.tokens.{text}.source: model {model} is not among the models "
                    f"merged here ({', '.join(refs)}); name one of them"
                )
            m = refs.index(model)
            row = self._source_row(text, src, m, plan, k)
            plan.donor[k], plan.donor_row[k] = m, row
        return plan

    def _source_row(self, text: str, src, m: int, plan: RowPlan, k: int) -> int:  # noqa: ANN001
        if isinstance(src, ModelTokenEmbedding):
            if src.token_id is not None:
                return src.token_id
            row = self.built.original.get(src.model, {}).get(src.token)
            if row is None:
                raise UserInputError(
                    f"tokenizer.tokens.{text}.source.token: {src.token!r} is not in the "
                    f"vocabulary of {src.model}; name a token it has"
                )
            return row
        row = int(plan.ids[m, plan.need[k]])
        if row < 0:
            raise UserInputError(
                f"tokenizer.tokens.{text}.source: {src} has no token {text!r}; name a model "
                "that has it, or use {kind: model_token, model: ..., token: ...}"
            )
        return row


def _shared_rows(plan: RowPlan, ts: list[torch.Tensor], name: str, refs: list[str]) -> torch.Tensor:
    first = ts[0]
    shared = first.new_zeros((len(plan.need), *first.shape[1:]))
    for m, t in enumerate(ts):
        sel = plan.donor == m
        if bool(sel.any()):
            rows = plan.donor_row[sel]
            if int(rows.max()) >= t.shape[0]:
                raise UserInputError(
                    f"tokenizer.tokens: token id {int(rows.max())} is past the {t.shape[0]} rows "
                    f"of {name} in {refs[m]}; name a smaller token_id"
                )
            shared[sel] = t[rows]
    if bool(plan.mean.any()):
        ids = plan.ids[:, plan.need[plan.mean]]
        total = first.new_zeros((int(plan.mean.sum()), *first.shape[1:]))
        for m, t in enumerate(ts):
            have = ids[m] >= 0
            total[have] += t[ids[m][have]]
        shared[plan.mean] = total / (ids >= 0).sum(0).unsqueeze(1).to(total.dtype)
    return shared
