"""What scoring a candidate yields: the fitness's scores (``TaskScore`` per task, with the
per-example values behind it, gathered in an ``EvalResult``) and the job's record around them
(``JobResult``: OK or FAIL, fitness, error, time, worker).

A neutral module, below everything that makes or reads these: the fitness, the zoo's
evaluators, the workers, the drivers and the store all import it, and it imports none of them.
Per-example vectors are first-class: M2N2's shared fitness needs them, and so do subsample
estimates and the report's per-task plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskScore:
    """One task's score (higher is better) and the per-example values it averages."""

    score: float
    per_example: tuple[float, ...] = ()
    metric: str = "acc"
    # per-example weights of a score that is not the plain mean of per_example (perplexity:
    # each window's predicted tokens, the score being over tokens); empty: a plain mean
    weights: tuple[float, ...] = ()

    @classmethod
    def from_examples(cls, values: Sequence[float], metric: str = "acc") -> TaskScore:
        vals = tuple(float(v) for v in values)
        score = sum(vals) / len(vals) if vals else math.nan
        return cls(score=score, per_example=vals, metric=metric)


@dataclass(frozen=True)
class EvalResult:
    """Scores of one candidate model on every task of a fitness suite."""

    tasks: Mapping[str, TaskScore] = field(default_factory=dict)

    @property
    def scores(self) -> dict[str, float]:
        return {name: t.score for name, t in self.tasks.items()}

    def aggregate(self, weights: Mapping[str, float] | None = None) -> float:
        """Weighted mean of task scores (uniform when ``weights`` is None); NaN if any is NaN."""
        if not self.tasks:
            return math.nan
        w = {name: 1.0 for name in self.tasks} if weights is None else dict(weights)
        total = sum(w.get(name, 0.0) for name in self.tasks)
        if total <= 0:
            return math.nan
        return sum(w.get(n, 0.0) * t.score for n, t in self.tasks.items()) / total

    def to_json(self) -> dict:
        return {n: _task_json(t) for n, t in self.tasks.items()}

    @classmethod
    def from_json(cls, data: Mapping) -> EvalResult:
        return cls(
            tasks={
                n: TaskScore(
                    score=float(d["score"]),
                    per_example=tuple(d.get("per_example", ())),
                    metric=d.get("metric", "acc"),
                    weights=tuple(d.get("weights", ())),
                )
                for n, d in data.items()
            }
        )


def _task_json(t: TaskScore) -> dict:
    out = {"score": t.score, "metric": t.metric, "per_example": list(t.per_example)}
    if t.weights:  # only weighted scores carry the key: other results store as they always did
        out["weights"] = list(t.weights)
    return out


OK = "OK"
FAIL = "FAIL"


@dataclass(frozen=True)
class JobResult:
    """One candidate's evaluation as the job returns it: never raised, a failure is data."""

    digest: str
    status: str
    fitness: float
    objectives: tuple[float, ...] = ()
    result: EvalResult | None = None
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""
    #: a wants job's answers (``workers.wants``: e.g. a gradient); never stored
    wanted: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, digest: str, error: str, seconds: float = 0.0, worker: str = "") -> JobResult:
        return cls(
            digest=digest,
            status=FAIL,
            fitness=math.nan,
            error=error,
            seconds=seconds,
            worker=worker,
        )

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def item_evals(self) -> int:
        """Item evaluations it holds: the per-example values it returned (the unit of fitness
        cost; 0 for a fitness that returns no per-example values)."""
        if self.result is None:
            return 0
        return sum(len(t.per_example) for t in self.result.tasks.values())
