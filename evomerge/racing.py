"""Racing within a generation: score candidates on growing item slices, stop the sure losers.

Rank-based drivers need the order of a generation's best, not every score to full precision
(the idea of racing algorithms, Maron & Moore, "Hoeffding races", NIPS 1993; the same
elimination drives irace, López-Ibáñez et al. 2016). Here:

1. every fresh candidate of the generation is scored on the first ``first_slice`` items of the
   run's item pool (``evomerge.fitness.items``: one seeded order, the same for every candidate;
   with ``order: generation`` a fresh seeded order each generation, the same for every
   candidate of it);
2. the candidates still racing are ranked by their mean item value; those ranked below the
   driver's need ``k`` (``Driver.racing_need``: CMA-ES's mu, random/Optuna's 1) are compared,
   item by item on the items both saw, with the k-th best: a candidate whose one-sided upper
   bound on the mean paired difference, ``mean(d) + z * sd(d) / sqrt(m)`` (z from
   ``confidence``, a normal bound, not a finite-sample guarantee), is below 0 cannot be among
   the best k. It stops only when it also cannot enter the archive: the same bound is below 0
   against the archive's ``top_k``-th best (``archive_places``-th when set: the later places
   then take the best fully scored candidates) once this generation joins it (its members are
   fully scored, so their values on these items are known; the generation's candidates
   count with their means so far). A perplexity entry's score is a ratio of sums, not a
   mean: its items enter these comparisons linearized (``ItemPool.linearize``: the delta
   method for a ratio estimator), and no candidate is dropped before the first items hold
   two of its windows;
   With ``settle: set`` a candidate also stops once it is surely among the best k (the same
   bound puts it above the best candidate outside them) and cannot enter the archive: the
   driver then gets the best k as a set, ordered by their means so far;
   With ``indifference: eps`` > 0 every "surely below" above reads "surely not above by more
   than eps" (the bound is compared with eps instead of 0): candidates within eps of each
   other count as tied, which the driver does not care how it breaks, and stop. This is the
   indifference zone of ranking and selection (Bechhofer, "A single-sample multiple decision
   procedure for ranking means of normal populations with known variances", Ann. Math.
   Statist. 1954: differences smaller than delta* are not worth detecting); putting it into
   this paired bound is ours, not a formula from that paper. Without it two candidates equal
   on every item so far (e.g. both 0 on a hard target) have a bound of exactly 0 and run to
   the last item;
3. the others get the next ``slice`` items, and so on until only survivors are left, which
   are scored on every item, or every item is used. Each round is submitted in the reverse
   of the previous one's order (``submission_order``): the candidates scored last are still
   resident on their workers and are scored first, without a merge (``Materializer``).

So the archive, the winner and the driver's best k only ever hold fully scored candidates
(but see ``archive_places: 0`` below); a stopped candidate is told the mean of the values it
got (an unbiased estimate of its fitness on the whole pool) and stored with how many items it
was scored on. With ``archive_places: 0`` (only with ``fitness.validation``) racing guards no
archive place, only the driver's need, and the archive holds the best candidates by those
means, for validation to re-score on its own items (``SearchLoop``; what this is worth is
measured in docs/racing_measurements.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from evomerge.fitness.config import RacingConfig
from evomerge.fitness.items import ItemPool
from evomerge.recipe import Recipe
from evomerge.workers.base import OK, JobResult

META_KEY = "racing"  # candidate meta: {"items": scored on, "of": pool size}


@dataclass(frozen=True)
class RaceOutcome:
    results: list[JobResult]
    items: list[int]  # items each candidate was scored on (its item evaluations)


def paired_upper(a: np.ndarray, b: np.ndarray, z: float) -> float:
    """One-sided upper bound on mean(a - b) over the items both were scored on."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    m = len(d)
    if m < 2:
        return math.inf
    return float(d.mean() + z * d.std(ddof=1) / math.sqrt(m))


def sure_losers(
    values: dict[int, np.ndarray],
    need: int,
    archive: Sequence[np.ndarray],
    places: int,
    z: float,
    eps: float = 0.0,
) -> set[int]:
    """Candidates (keys of ``values``, equal-length arrays of their first m item values) that
    surely are neither among the best ``need`` of them nor able to enter the archive: below
    the ``places``-th best of the archive's members (``archive``: their values on every item)
    and the candidates together, ranked on these m items (``places`` 0: no archive place is
    raced for). ``eps``: the indifference zone (a candidate surely not above by more than eps
    counts as below)."""
    return settle(values, need, archive, places, z, eps=eps)[0]


def settle(
    values: dict[int, np.ndarray],
    need: int,
    archive: Sequence[np.ndarray],
    places: int,
    z: float,
    inside: bool = False,
    eps: float = 0.0,
) -> tuple[set[int], set[int]]:
    """(losers, winners): the sure losers (``sure_losers``) and, with ``inside``, the
    candidates surely among the best ``need`` (the same bound says they are above the best
    candidate outside them) that cannot enter the archive either: both can stop. ``need`` 0:
    the places are taken, every candidate that cannot enter the archive is a loser. Every
    comparison is ``paired_upper(a, b) < eps``: a surely not above b by more than ``eps``."""
    order = sorted(values, key=lambda i: (-float(values[i].mean()), i))
    if not order:
        return set(), set()
    m = len(values[order[0]])
    gate, entering = None, set()
    if places and len(values) + len(archive) > places:
        both = [(float(a[:m].mean()), -1, a[:m]) for a in archive]
        both += [(float(values[i].mean()), i, values[i]) for i in order]
        both.sort(key=lambda row: (-row[0], row[1]))
        gate = both[places - 1][2]  # the archive's places-th after this generation, as it stands
        entering = {row[1] for row in both[:places]}

    def shut_out(i: int) -> bool:  # surely cannot enter the archive
        if places == 0:  # archive_places 0: no place is raced for
            return True
        return gate is not None and i not in entering and paired_upper(values[i], gate, z) < eps

    losers: set[int] = set()
    if len(values) > need:
        if need == 0:
            losers = {i for i in order if shut_out(i)}
        else:
            ref = values[order[need - 1]]
            losers = {i for i in order[need:] if paired_upper(values[i], ref, z) < eps}
            losers = {i for i in losers if shut_out(i)}
    winners: set[int] = set()
    if inside and 0 < need < len(values):
        first_out = values[order[need]]
        winners = {i for i in order[:need] if paired_upper(first_out, values[i], z) < eps}
        winners = {i for i in winners if shut_out(i)}
    return losers, winners


class Racer:
    # False submits every round in candidate order (to compare, in tests)
    resident_order = True

    def __init__(
        self, cfg: RacingConfig, pool: ItemPool, fitness: Any, need: int, places: int
    ) -> None:
        self.cfg, self.pool, self.fitness, self.need = cfg, pool, fitness, need
        self.run_pool = pool  # order "generation" reorders it per generation
        self.places = places  # the archive's best places it races for (archive_places or top_k)
        self.z = NormalDist().inv_cdf(cfg.confidence)
        self.eps = cfg.indifference

    def start_generation(self, generation: int) -> None:
        """With ``order: generation``, race this generation on its own seeded item order."""
        if self.cfg.order == "generation":
            self.pool = self.run_pool.for_generation(generation)

    def race(
        self,
        evaluator: Any,
        recipes: Sequence[Recipe],
        archive: Sequence[np.ndarray],
        archive_weights: Sequence[np.ndarray] | None = None,
    ) -> RaceOutcome:
        """Race ``recipes``; ``archive``: the archive members' values on every item
        (``ItemPool.full_values``), ``archive_weights`` their item weights
        (``ItemPool.full_weights``; None: every item weighs 1, as without ratio entries)."""
        n, size = len(recipes), self.pool.size
        if archive_weights is None:
            archive_weights = [np.ones(size) for _ in archive]
        parts: list[list[tuple[Any, int, int]]] = [[] for _ in range(n)]
        values = [np.empty(0) for _ in range(n)]
        weights = [np.empty(0) for _ in range(n)]
        spent, seconds = [0] * n, [0.0] * n
        last: list[JobResult | None] = [None] * n
        failed: dict[int, JobResult] = {}
        alive = list(range(n))
        need = self.need  # places among the best k not yet taken by a candidate settled inside
        inside = self.cfg.settle == "set"
        start, stop = 0, min(size, self.cfg.first_slice)
        order: list[int] = []
        while alive and start < size:
            order = self.submission_order(order, alive)
            items = [self.pool.positions(start, stop)] * len(order)
            results = evaluator.evaluate([recipes[i] for i in order], items)
            for i, r in zip(order, results, strict=True):
                spent[i] += stop - start
                seconds[i] += r.seconds
                last[i] = r
                if not r.ok:
                    failed[i] = r
                    continue
                parts[i].append((r.result, start, stop))
                values[i] = np.concatenate(
                    [values[i], self.pool.slice_values(r.result, start, stop)]
                )
                weights[i] = np.concatenate(
                    [weights[i], self.pool.slice_weights(r.result, start, stop)]
                )
            alive = [i for i in alive if i not in failed]
            start, stop = stop, min(size, stop + self.cfg.slice)
            if start < size and self.pool.bounded(start):
                lin = self.pool.linearize
                live = {i: lin(values[i], weights[i]) for i in alive}
                floor = [
                    lin(a[:start], w[:start]) for a, w in zip(archive, archive_weights, strict=True)
                ]
                losers, winners = settle(live, need, floor, self.places, self.z, inside, self.eps)
                need -= len(winners)
                alive = [i for i in alive if i not in losers and i not in winners]
        results = []
        for i in range(n):
            if i in failed:
                results.append(replace(failed[i], seconds=seconds[i]))
            else:
                est = self.pool.estimate(values[i], weights[i]) if len(values[i]) else math.nan
                results.append(self._result(last[i], parts[i], len(values[i]), est, seconds[i]))
        return RaceOutcome(results, spent)

    def submission_order(self, previous: list[int], alive: list[int]) -> list[int]:
        """The order a round's slices are submitted in: the previous round's, reversed (the
        candidates scored last are resident on the workers that scored them, so they go
        first and need no merge), for those still racing. Each slice is a job seeded by its
        recipe alone: the order changes no value, only how often a candidate is merged."""
        if not self.resident_order or not previous:
            return list(alive)
        racing = set(alive)
        return [i for i in reversed(previous) if i in racing]

    def _result(self, last: JobResult, parts: list, m: int, est: float, secs: float) -> JobResult:
        joined = self.pool.join(parts)
        if m == self.pool.size:  # every item: exactly what a plain evaluation gives
            fit, objs = self.fitness.aggregate(joined), self.fitness.objectives(joined)
        else:  # the estimate from the m items it was scored on
            fit = est
            objs = (fit,)
        return JobResult(
            digest=last.digest,
            status=OK,
            fitness=float(fit),
            objectives=tuple(float(v) for v in objs),
            result=joined,
            seconds=secs,
            worker=last.worker,
        )


def meta(items: int, size: int) -> dict[str, int]:
    return {"items": int(items), "of": int(size)}


def is_partial(meta_json: dict) -> bool:
    r = meta_json.get(META_KEY)
    return bool(r) and r["items"] < r["of"]
