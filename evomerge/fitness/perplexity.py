"""Perplexity on a text file, as a "higher is better" fitness.

The file is tokenized once (no special tokens added between lines; a BOS token is prepended
when the tokenizer has one) and cut into consecutive, non-overlapping windows of
``max_length`` tokens (the last, shorter one kept if it has at least 2 tokens). Each window is
one example: its per-example value is its mean token log-likelihood. The task score is over all
predicted tokens together:

* ``neg_log_ppl`` (default): -log(ppl) = mean token log-likelihood (<= 0; 0 is perfect). Linear
  in the loss, so averages and CMA-ES steps behave well.
* ``inv_ppl``: 1 / ppl = exp(mean log-likelihood), in (0, 1]; reads like an accuracy.

The score is a ratio of sums (log-likelihood over tokens), not the mean of the window values,
so each window's predicted tokens are kept too (``TaskScore.weights``) and the score is
computed from the two (``window_score``): racing (``fitness.racing``, docs/racing.md) scores a
subset of the windows and joins them back to exactly this score. Racing needs ``max_windows``
(the windows it may score); ``run_items`` scores the windows at given positions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError
from evomerge.results import TaskScore


def resolve_file(path_s: str, base_dir: Path | None, field: str) -> Path:
    p = Path(path_s).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    if not p.exists():
        raise UserInputError(f"{field}: {p} not found")
    return p


class PerplexityTask:
    def __init__(
        self,
        label: str,
        text_file: str,
        *,
        max_length: int = 256,
        max_windows: int | None = None,
        skip_windows: int = 0,
        score: str = "neg_log_ppl",
        base_dir: Path | None = None,
    ) -> None:
        self.label = label
        self.path = resolve_file(text_file, base_dir, f"{label}.text_file")
        self.text = self.path.read_text(encoding="utf-8")
        if not self.text.strip():
            raise UserInputError(f"{label}.text_file: {self.path} is empty")
        self.max_length = max_length
        self.max_windows = max_windows
        self.skip_windows = skip_windows  # validation: the windows after the search's
        self.score = score
        self._ids: Any = None  # token ids, cached per tokenizer
        self.ratio_score = score  # racing: this task's score is a ratio of sums (items.py)

    def _windows(self, tokenizer: Any) -> list[list[int]]:
        if self._ids is None or self._ids[0] is not tokenizer:
            ids = tokenizer(self.text, add_special_tokens=False)["input_ids"]
            bos = getattr(tokenizer, "bos_token_id", None)
            self._ids = (tokenizer, ([bos] if bos is not None else []) + list(ids))
        ids = self._ids[1]
        wins = [ids[i : i + self.max_length] for i in range(0, len(ids), self.max_length)]
        wins = [w for w in wins if len(w) >= 2][self.skip_windows :]
        return wins[: self.max_windows] if self.max_windows else wins

    def run(self, model: Any, tokenizer: Any) -> dict[str, TaskScore]:
        wins = self._windows(tokenizer)
        if not wins and self.skip_windows:
            raise UserInputError(
                f"fitness.validation: {self.path} has no windows after the search's first "
                f"{self.skip_windows}; lower max_windows or give a longer text_file"
            )
        if not wins:
            raise UserInputError(f"{self.label}: {self.path} has fewer than 2 tokens")
        return {self.label: self._scored(model, wins)}

    def item_counts(self) -> dict[str, int]:
        """Racing's items: the ``max_windows`` windows (the config refuses racing without it)."""
        return {self.label: int(self.max_windows)}

    def run_items(
        self, model: Any, tokenizer: Any, positions: dict[str, list[int]]
    ) -> dict[str, TaskScore]:
        """The windows at ``positions`` (racing), per_example and weights in the order given."""
        wins = self._windows(tokenizer)
        pos = list(positions[self.label])
        if max(pos) >= len(wins):
            raise UserInputError(
                f"{self.label}.max_windows: {self.path} has only {len(wins)} windows of "
                f"{self.max_length} tokens; set max_windows to at most {len(wins)}"
            )
        return {self.label: self._scored(model, [wins[p] for p in pos])}

    def _scored(self, model: Any, wins: list[list[int]]) -> TaskScore:
        import torch  # late: keep `import evomerge.fitness` light

        device = next(model.parameters()).device
        per_window, tokens = [], []
        with torch.no_grad():
            for w in wins:
                ids = torch.tensor([w], device=device)
                logits = model(input_ids=ids).logits[0, :-1].float()
                ll = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None]).sum().item()
                per_window.append(ll / (len(w) - 1))
                tokens.append(float(len(w) - 1))
        return TaskScore(
            score=window_score(per_window, tokens, self.score),
            per_example=tuple(per_window),
            metric=self.score,
            weights=tuple(tokens),
        )


def window_score(per_window: Any, tokens: Any, score: str) -> float:
    """The task score from the windows' mean log-likelihoods and their predicted tokens: the
    mean over every token (windows weighted by their tokens), as -log(ppl) or 1/ppl. A plain
    run and racing's join of its slices both compute it here, from the same values in window
    order, so the two agree to the last bit."""
    total = sum(float(v) * float(n) for v, n in zip(per_window, tokens, strict=True))
    mean_ll = total / sum(float(n) for n in tokens)
    return mean_ll if score == "neg_log_ppl" else math.exp(mean_ll)
