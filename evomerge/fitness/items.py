"""The item pool racing scores a candidate on, one slice at a time.

Every item of every task entry in the search window is one pool item. The pool is put in one
seeded order, fixed for the run, so every candidate sees the same items in the same order and
two candidates are compared item by item (paired). An item's *value* is its per-example score
scaled by its entry's share of the fitness: ``N * share / n_entry * score`` (``N`` pool items,
``n_entry`` items of its entry). The mean of all N values is then exactly the fitness the
weighted task means give (``Fitness.aggregate``), and the mean of the first ``m`` values is an
unbiased estimate of it (the order is a uniform random permutation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evomerge.fitness.result import EvalResult, TaskScore

# Mixed into the run's seed so the item order is not the stream of any other seeded draw.
_ORDER_SALT = 0x5ACE


def check_raceable(cfg: Any) -> None:
    """ValueError (one config error line) when ``fitness.racing`` cannot work on these tasks."""
    if len(cfg.objective_names) > 1:
        raise ValueError(
            f"racing: the fitness has {len(cfg.objective_names)} objectives "
            f"({', '.join(cfg.objective_names)}); racing ranks one score, so remove "
            "fitness.racing or use one objective"
        )
    for i, t in enumerate(cfg.tasks):
        if t.kind in ("lm_eval", "python"):
            continue  # checked when the runner is built (lm_eval: a mean metric; python: opt-in)
        if t.kind != "zoo" or str(t.evaluator).startswith("digits"):
            what = t.kind if t.kind != "zoo" else f"zoo evaluator {t.evaluator!r}"
            raise ValueError(
                f"tasks.{i}: racing scores items a slice at a time, which zoo tasks with test "
                f"items, lm_eval and opted-in python tasks can do ({what} cannot); remove "
                "fitness.racing"
            )


@dataclass(frozen=True)
class ItemPool:
    entries: tuple[tuple[str, int, float], ...]  # (entry label, items, share of the fitness)
    order: tuple[tuple[int, int], ...]  # racing order: (entry index, position in the entry)

    @classmethod
    def build(cls, fitness: Any, seed: int) -> ItemPool:
        entries = tuple(fitness.item_entries())
        flat = [(e, p) for e, (_, n, _) in enumerate(entries) for p in range(n)]
        perm = np.random.default_rng([_ORDER_SALT, int(seed)]).permutation(len(flat))
        return cls(entries, tuple(flat[i] for i in perm))

    @property
    def size(self) -> int:
        return len(self.order)

    def _scale(self, e: int) -> float:
        _, n, share = self.entries[e]
        return self.size * share / n

    def positions(self, start: int, stop: int) -> dict[str, list[int]]:
        """Entry label -> positions of the pool items ``[start, stop)``, in racing order."""
        out: dict[str, list[int]] = {}
        for e, p in self.order[start:stop]:
            out.setdefault(self.entries[e][0], []).append(p)
        return out

    def slice_values(self, result: EvalResult, start: int, stop: int) -> np.ndarray:
        """Values of pool items ``[start, stop)`` from a result scored on ``positions(start,
        stop)`` (each entry's per_example in that order)."""
        seen: dict[int, int] = {}
        out = np.empty(stop - start)
        for j, (e, _) in enumerate(self.order[start:stop]):
            k = seen.get(e, 0)
            seen[e] = k + 1
            out[j] = self._scale(e) * result.tasks[self.entries[e][0]].per_example[k]
        return out

    def full_values(self, result: EvalResult) -> np.ndarray:
        """Values of every pool item, in racing order, from a fully scored result (per_example
        in window order, as a plain evaluation stores it)."""
        return np.array(
            [
                self._scale(e) * result.tasks[self.entries[e][0]].per_example[p]
                for e, p in self.order
            ]
        )

    def join(self, parts: Sequence[tuple[EvalResult, int, int]]) -> EvalResult:
        """One result from slices ``(result, start, stop)``: each entry's scored items in window
        order, so a candidate scored on every item gets exactly the result a plain evaluation
        gives; a partly scored one gets the mean of the items it was scored on."""
        got: dict[str, dict[int, float]] = {}
        metric: dict[str, str] = {}
        for result, start, stop in parts:
            for label, pos in self.positions(start, stop).items():
                ts = result.tasks[label]
                metric[label] = ts.metric
                got.setdefault(label, {}).update(zip(pos, ts.per_example, strict=True))
        return EvalResult(
            tasks={
                label: TaskScore.from_examples(
                    [got[label][p] for p in sorted(got[label])], metric=metric[label]
                )
                for label, _, _ in self.entries
                if label in got
            }
        )
