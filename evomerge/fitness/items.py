"""The item pool racing scores a candidate on, one slice at a time.

Every item of every task entry in the search window is one pool item. The pool is put in one
seeded order, fixed for the run, so every candidate sees the same items in the same order and
two candidates are compared item by item (paired). An item's *value* is its per-example score
scaled by its entry's share of the fitness: ``N * share / n_entry * score`` (``N`` pool items,
``n_entry`` items of its entry). The mean of all N values is then exactly the fitness the
weighted task means give (``Fitness.aggregate``), and the mean of the first ``m`` values is an
unbiased estimate of it (the order is a uniform random permutation).

A *ratio* entry (perplexity: log-likelihood summed over windows, divided by their tokens) has a
score that is not the mean of its items, so its items are kept raw (each window's mean
log-likelihood, and its tokens as the item's weight) and ``linearize`` turns the first ``m``
items into values whose mean is the ratio estimate and whose spread is the delta method's
(Taylor linearization of a ratio estimator; Cochran, *Sampling Techniques*, 3rd ed., 1977,
ch. 6). The paired bound of ``evomerge.racing`` then applies to them unchanged (docs/racing.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evomerge.fitness.perplexity import window_score
from evomerge.fitness.result import EvalResult, TaskScore

# Mixed into the run's seed so the item order is not the stream of any other seeded draw.
_ORDER_SALT = 0x5ACE


def check_raceable(cfg: Any, field: str = "fitness.racing") -> None:
    """ValueError (one config error line) when racing (``field``: fitness.racing or
    fitness.validation.racing) cannot work on these tasks."""
    if len(cfg.objective_names) > 1:
        raise ValueError(
            f"{field.removeprefix('fitness.')}: the fitness has {len(cfg.objective_names)} "
            f"objectives ({', '.join(cfg.objective_names)}); racing ranks one score, so remove "
            f"{field} or use one objective"
        )
    for i, t in enumerate(cfg.tasks):
        if t.kind in ("lm_eval", "python"):
            continue  # checked when the runner is built (lm_eval: a mean metric; python: opt-in)
        if t.kind == "perplexity":
            if t.max_windows is None:
                raise ValueError(
                    f"tasks.{i}.max_windows: racing scores a perplexity task's windows a slice "
                    f"at a time and must know how many it scores; set max_windows (or remove "
                    f"{field})"
                )
            continue
        if t.kind != "zoo" or str(t.evaluator).startswith("digits"):
            what = t.kind if t.kind != "zoo" else f"zoo evaluator {t.evaluator!r}"
            raise ValueError(
                f"tasks.{i}: racing scores items a slice at a time, which zoo tasks with test "
                f"items, lm_eval, perplexity and opted-in python tasks can do ({what} cannot); "
                f"remove {field}"
            )


@dataclass(frozen=True)
class ItemPool:
    entries: tuple[tuple[str, int, float], ...]  # (entry label, items, share of the fitness)
    order: tuple[tuple[int, int], ...]  # racing order: (entry index, position in the entry)
    ratios: tuple[tuple[int, str], ...] = ()  # (entry index, score kind) of the ratio entries
    seed: int = 0  # the run's seed: it drew this order and draws each generation's

    @classmethod
    def build(cls, fitness: Any, seed: int) -> ItemPool:
        entries = tuple(fitness.item_entries())
        kinds = fitness.ratio_entries()
        ratios = tuple((e, kinds[lab]) for e, (lab, _, _) in enumerate(entries) if lab in kinds)
        return cls(entries, (), ratios, int(seed)).reordered([_ORDER_SALT, int(seed)])

    def for_generation(self, generation: int) -> ItemPool:
        """The same items in the order of generation ``generation`` (racing ``order:
        generation``): seeded by the run's seed and the generation, so a resumed run races a
        generation on the order it was raced on before."""
        return self.reordered([_ORDER_SALT, self.seed, int(generation)])

    def reordered(self, rng_seed: list[int]) -> ItemPool:
        """These items in the uniform random order ``rng_seed`` draws."""
        flat = [(e, p) for e, (_, n, _) in enumerate(self.entries) for p in range(n)]
        perm = np.random.default_rng(rng_seed).permutation(len(flat))
        return ItemPool(self.entries, tuple(flat[i] for i in perm), self.ratios, self.seed)

    @property
    def size(self) -> int:
        return len(self.order)

    def _scale(self, e: int) -> float:
        if any(e == r for r, _ in self.ratios):
            return 1.0  # a ratio entry's items stay raw: linearize weighs them
        _, n, share = self.entries[e]
        return self.size * share / n

    @staticmethod
    def _weight(ts: TaskScore, k: int) -> float:
        return float(ts.weights[k]) if ts.weights else 1.0

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

    def slice_weights(self, result: EvalResult, start: int, stop: int) -> np.ndarray:
        """The weights of pool items ``[start, stop)`` (a ratio entry's: its windows' tokens;
        any other item's: 1), from the same result as ``slice_values``."""
        seen: dict[int, int] = {}
        out = np.empty(stop - start)
        for j, (e, _) in enumerate(self.order[start:stop]):
            k = seen.get(e, 0)
            seen[e] = k + 1
            out[j] = self._weight(result.tasks[self.entries[e][0]], k)
        return out

    def full_weights(self, result: EvalResult) -> np.ndarray:
        """The weights of every pool item, in racing order, from a fully scored result."""
        return np.array([self._weight(result.tasks[self.entries[e][0]], p) for e, p in self.order])

    def bounded(self, m: int) -> bool:
        """Whether the first ``m`` items hold at least 2 of every ratio entry: with fewer its
        delta-method spread is 0 (or undefined), which no bound may rest on."""
        seen = [e for e, _ in self.order[:m]]
        return all(seen.count(e) >= 2 for e, _ in self.ratios)

    def linearize(self, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The first ``m = len(values)`` items as values whose mean is the estimate of the
        fitness and whose spread is its delta-method spread. Items of mean entries keep their
        value (their mean over the m items is unbiased for their part). A ratio entry ``e``
        with ``k`` of its windows among the m (log-likelihoods ``l = value * tokens``, tokens
        ``n``) is estimated by ``R = sum(l) / sum(n)``, its part by ``share * g(R)`` (``g`` is
        the identity for -log(ppl), exp for 1/ppl); its items get the linearized residual
        ``share * (m / k) * g'(R) * (l - R * n) / mean(n)`` (they sum to 0), and every item
        gets the ratio parts added, so the mean is exact. Two candidates' values differ item by
        item as the linearization of the difference of their estimates (the windows, hence
        ``n``, are the same for both). Without ratio entries: the values as they are."""
        if not self.ratios:
            return values
        m = len(values)
        ent = np.array([e for e, _ in self.order[:m]])
        out = np.array(values, dtype=float)
        parts = 0.0
        for e, kind in self.ratios:
            at = ent == e
            k = int(at.sum())
            if k == 0:
                continue  # none of its windows yet (``bounded`` keeps races from resting on it)
            n = np.asarray(weights, dtype=float)[at]
            ll = out[at] * n
            r = float(ll.sum() / n.sum())
            g = r if kind == "neg_log_ppl" else math.exp(r)
            slope = 1.0 if kind == "neg_log_ppl" else g
            share = self.entries[e][2]
            out[at] = share * (m / k) * slope * (ll - r * n) / n.mean()
            parts += share * g
        return out + parts

    def estimate(self, values: np.ndarray, weights: np.ndarray) -> float:
        """The fitness estimated from the first ``len(values)`` items (racing's told value)."""
        return float(self.linearize(values, weights).mean())

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
        got: dict[str, dict[int, tuple[float, float]]] = {}
        metric: dict[str, str] = {}
        for result, start, stop in parts:
            for label, pos in self.positions(start, stop).items():
                ts = result.tasks[label]
                metric[label] = ts.metric
                w = ts.weights or (1.0,) * len(ts.per_example)
                got.setdefault(label, {}).update(zip(pos, zip(ts.per_example, w), strict=True))
        kinds = {self.entries[e][0]: kind for e, kind in self.ratios}
        out = {}
        for label, _, _ in self.entries:
            if label not in got:
                continue
            vals = [got[label][p][0] for p in sorted(got[label])]
            if label not in kinds:
                out[label] = TaskScore.from_examples(vals, metric=metric[label])
                continue
            tokens = tuple(got[label][p][1] for p in sorted(got[label]))
            score = window_score(vals, tokens, kinds[label])
            out[label] = TaskScore(score, tuple(vals), metric[label], tokens)
        return EvalResult(tasks=out)
