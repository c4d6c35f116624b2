"""The Fitness object: runs every configured task on a resident model and combines the scores.

``__call__(model, tokenizer) -> EvalResult`` (one entry per task; a python task returning a dict
or an EvalResult contributes ``<name>/<key>`` entries). ``aggregate`` is the weighted mean of the
task scores (a task with several entries counts as their mean); ``objectives`` gives one weighted
mean per ``objective`` group, in first-appearance order: a 1-tuple for single-objective search,
a vector for several (Optuna NSGA-II). Any missing or NaN task score makes the result NaN, which
the loop records as a failed candidate. Every score is "higher is better".

``fitness.constraints`` tasks run after the objective's tasks; their entries are in the result
(and the store) but in no objective; a missing or NaN constraint score also makes the aggregate
NaN (a failure). Feasibility is read from those entries (evomerge.fitness.constraints).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from evomerge.fitness.config import FitnessConfig
from evomerge.results import EvalResult, TaskScore


class TaskRunner(Protocol):
    """One configured task, ready to score a resident model."""

    label: str

    def run(self, model: Any, tokenizer: Any) -> dict[str, TaskScore]: ...


class Fitness:
    def __init__(self, cfg: FitnessConfig, runners: Sequence[TaskRunner]) -> None:
        self.cfg = cfg
        self.runners = list(runners)
        # the objective's runners first; any after them score fitness.constraints (search only)
        own = self.runners[: len(cfg.tasks)]
        self._weights = {r.label: t.weight for r, t in zip(own, cfg.tasks, strict=True)}
        self._groups = {r.label: t.objective for r, t in zip(own, cfg.tasks, strict=True)}
        self.constraint_labels = [r.label for r in self.runners[len(cfg.tasks) :]]

    @property
    def objective_names(self) -> list[str]:
        return self.cfg.objective_names

    @property
    def n_objectives(self) -> int:
        return len(self.objective_names)

    def __call__(
        self, model: Any, tokenizer: Any, items: dict[str, list[int]] | None = None
    ) -> EvalResult:
        """Every task's scores; ``items`` (entry label -> item positions; racing) scores only
        those items, with each entry's per_example in the order given."""
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            tasks: dict[str, TaskScore] = {}
            for r in self.runners:
                if items is None:
                    tasks.update(r.run(model, tokenizer))
                    continue
                mine = {
                    e: p for e, p in items.items() if e == r.label or e.startswith(r.label + "/")
                }
                if mine:
                    tasks.update(r.run_items(model, tokenizer, mine))
        finally:
            if was_training:
                model.train()
        return EvalResult(tasks=tasks)

    def item_entries(self) -> list[tuple[str, int, float]]:
        """(entry label, search items, share of the aggregate) of every scored entry, in task
        order; the shares sum to 1. Racing builds its item pool from this (tasks whose runner
        cannot score a slice are refused when the config is read)."""
        total = sum(self._weights.values())
        out = []
        for r in self.runners[: len(self._weights)]:
            counts = r.item_counts()
            for entry, n in counts.items():
                out.append((entry, n, self._weights[r.label] / total / len(counts)))
        return out

    def ratio_entries(self) -> dict[str, str]:
        """Entry label -> score kind of the entries whose score is a ratio of sums, not a mean
        of their items (perplexity: log-likelihood over tokens); racing estimates those with a
        ratio estimator (``evomerge.fitness.items``)."""
        own = self.runners[: len(self._weights)]
        return {r.label: r.ratio_score for r in own if getattr(r, "ratio_score", None)}

    def task_score(self, result: EvalResult, label: str) -> float:
        """A configured task's score: its entry, or the mean of its ``label/…`` entries."""
        if label in result.tasks:
            return result.tasks[label].score
        subs = [t.score for n, t in result.tasks.items() if n.startswith(label + "/")]
        return sum(subs) / len(subs) if subs else math.nan

    def _weighted(self, result: EvalResult, labels: Sequence[str]) -> float:
        total = sum(self._weights[n] for n in labels)
        if total <= 0:
            return math.nan
        acc = 0.0
        for n in labels:
            if self._weights[n] == 0:  # recorded for the report, not scored
                continue
            s = self.task_score(result, n)
            if math.isnan(s):
                return math.nan
            acc += self._weights[n] * s
        return acc / total

    def aggregate(self, result: EvalResult) -> float:
        if any(math.isnan(self.task_score(result, n)) for n in self.constraint_labels):
            return math.nan
        return self._weighted(result, list(self._weights))

    def objectives(self, result: EvalResult) -> tuple[float, ...]:
        return tuple(
            self._weighted(result, [n for n, g in self._groups.items() if g == obj])
            for obj in self.objective_names
        )
