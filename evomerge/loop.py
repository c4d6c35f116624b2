"""The search loop: ask -> decode -> dedupe -> evaluate -> record + tell + checkpoint.

One generation is one SQLite transaction (candidates, results, pickled driver state, RNG state,
counters, archive table, and the batch asked ahead: table ``pending``), so a killed search
resumes from its last generation boundary and repeats exactly what the uninterrupted search
would have done:

* the driver's ``state_dict`` round-trips its next ``ask``; the global RNGs (python, numpy,
  torch) are checkpointed too, because library drivers may sample from them (pycma draws from
  numpy's global RNG), and the job function shields them from evaluation;
* a recipe whose digest was already scored in this run is not evaluated again: its stored
  result is reused (also within a generation);
* results are told in ask order and the archive ranks by (fitness, candidate index), so nothing
  depends on which worker finished first.

With ``fitness.racing`` the evaluation step races each generation's fresh candidates on item
slices (``evomerge.racing``); a candidate stopped early is stored with how many items it was
scored on (meta ``racing``), never enters the archive, and a later repeat of its recipe is
raced again instead of reused.

Stop conditions, checked at each generation boundary: ``budget.max_evals`` (fresh evaluations),
``budget.max_item_evals`` (item evaluations: the items each fresh candidate was scored on),
``budget.max_candidates``, ``budget.max_seconds`` (seconds of this search or resume, from its
own start: a resume gets a fresh clock), ``budget.max_total_seconds`` (summed over resumes), the
driver's own ``stop()``, a stop request (SIGINT/SIGTERM: the generation in flight finishes,
is committed, and the loop returns), and ``all_failed``: the first ``ALL_FAILED_AFTER`` fresh
evaluations of this search or resume all failed (a broken setup; like ``max_seconds`` it counts
from the run's start, and ``resume`` continues).
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from evomerge.archive import Archive, rank_top_k
from evomerge.drivers.base import Candidate, Driver
from evomerge.fitness.constraints import Constraints, feasible_fitness
from evomerge.loop_legacy import split_legacy_state
from evomerge.pending import jsonable_meta, pending_candidate, pending_record
from evomerge.racing import META_KEY as RACING_META
from evomerge.racing import Racer, is_partial
from evomerge.racing import meta as racing_meta
from evomerge.recipe import Recipe
from evomerge.rng_state import capture_rng, restore_rng
from evomerge.spaces.base import SearchSpace
from evomerge.stop_reason import record_stop, stop_detail
from evomerge.store import CandidateRecord as _CandRec
from evomerge.store import Checkpoint, RunStore
from evomerge.told import archive_fitness, constraint_values, objective_entries, told_values
from evomerge.workers.base import Evaluator, JobResult
from evomerge.workers.wants import tell_wanted

# A search (or resume) whose first this-many fresh evaluations all failed stops: the merges or
# their scoring are broken (a timeout too short for the model, memory, a tensor the start check
# cannot see), and the rest of the budget would only fail the same way.
ALL_FAILED_AFTER = 8


@dataclass(frozen=True)
class Budget:
    max_evals: int | None = None
    max_seconds: float | None = None
    max_candidates: int | None = None
    max_total_seconds: float | None = None
    max_item_evals: int | None = None


@dataclass(frozen=True)
class Progress:
    """What the loop reports after each committed generation (and what ``run`` returns)."""

    generation: int
    n_candidates: int
    n_evals: int
    n_failed: int
    best_fitness: float
    best_digest: str | None
    elapsed: float
    stop_reason: str | None = None
    n_item_evals: int = 0
    best_estimate: bool = False  # racing.archive_places 0: best_fitness is a partial mean


@dataclass
class _State:
    generation: int = 0
    n_candidates: int = 0
    n_evals: int = 0
    n_failed: int = 0
    elapsed: float = 0.0
    n_item_evals: int = 0


class SearchLoop:
    """The one search loop. A generation reads top to bottom in ``_generation``: take the batch
    (asked now, or asked ahead at the previous generation), ask the next batch ahead when the
    driver can, evaluate, tell; then ``_commit``: archive folders, one transaction, eviction.

    Asking ahead (``Driver.can_ask_ahead``: random, Optuna, steady-state M2N2): batch g+1 is
    asked (and, with a streaming evaluator, submitted) before batch g is told, so workers that
    finish g early start on g+1 instead of idling at the barrier. The schedule — ask g+1, tell
    g, commit g — is the same with every evaluator and worker count, so the archive does not
    depend on either (a serial evaluator simply runs g+1 later). Batch g+1 is recorded in the
    store's ``pending`` table by g's transaction; resume evaluates it instead of asking again.
    Dedupe spans the two batches: a recipe of g+1 that g is evaluating is not submitted again;
    it is reused from the store once g is committed.
    """

    def __init__(
        self,
        *,
        store: RunStore,
        space: SearchSpace,
        driver: Driver,
        evaluator: Evaluator,
        archive: Archive,
        budget: Budget,
        on_generation: Callable[[Progress], None] | None = None,
        stop_event: threading.Event | None = None,
        racer: Racer | None = None,
        constraints: Constraints | None = None,
    ) -> None:
        self.store, self.space, self.driver = store, space, driver
        self.evaluator, self.archive, self.budget = evaluator, archive, budget
        self.on_generation = on_generation
        self.stop_event = stop_event or threading.Event()
        self.state = _State()
        self.session_elapsed = 0.0  # seconds of this run() (max_seconds); state.elapsed: all runs
        self.session_fresh = self.session_ok = 0  # this run()'s fresh evaluations, successes
        self.scored: dict[str, int] = {}
        self.top = []  # the archive
        self._partial: set[int] = set()  # archive_places 0: candidates racing stopped early
        self.recipes: dict[str, Recipe] = {}
        self.racer = racer
        self.constraints = constraints  # fitness.constraints: infeasible never enters the archive
        # racing: archive members' item values and weights
        self._values: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._values_pool: Any = None  # the item pool (order) self._values are in
        # racing decides a generation's next slices from its last ones: it never streams ahead
        streams = hasattr(evaluator, "submit") and hasattr(evaluator, "poll")
        self._streaming = driver.can_ask_ahead and streams and racer is None
        self._restored: list[Candidate] | None = None  # the store's pending batch, at resume
        self._ahead: _Batch | None = None  # asked (and maybe submitted), not yet evaluated
        self._early: dict[int, JobResult] = {}  # streamed results polled before their turn
        self._pending: _Told | None = None  # told, not yet committed

    @property
    def _estimates(self) -> bool:
        """racing.archive_places 0: the archive takes candidates on their means so far."""
        return self.racer is not None and self.racer.places == 0

    # ---- start / resume ----------------------------------------------------------------------
    def restore(self) -> bool:
        """Load the last checkpoint (True) or leave a fresh state (False)."""
        cp = self.store.last_checkpoint()
        trials = self.store.trials()
        self.scored = self.store.scored_digests()
        if self.racer is not None:  # a recipe raced out early is raced again, not reused
            short = self.store.partial_idx()
            trials_full = [t for t in trials if t.idx not in short and t.reused_from not in short]
            self.scored = {}
            for t in trials_full:
                if t.reused_from is None and t.digest:
                    self.scored.setdefault(t.digest, t.idx)
        else:
            trials_full = trials
        cons = self.constraints

        def best(ts: Sequence) -> list:
            rows = ((feasible_fitness(t.fitness, t.scores, cons), t.idx, t.digest) for t in ts)
            return rank_top_k(rows, self.archive.top_k)

        if self._estimates:  # a digest scored in full is ranked on that score, never estimated
            self._partial = short
            full = {t.digest for t in trials_full}
            self.top = best(trials_full + [t for t in trials if t.digest not in full])
        else:
            self.top = best(trials_full)
        by_idx = {t.idx: t for t in trials}
        self.recipes = {e.digest: Recipe.from_yaml(by_idx[e.idx].recipe_yaml) for e in self.top}
        self.archive.reconcile(self.top, self.recipes)
        if cp is None:
            return False
        state, legacy_pending = split_legacy_state(pickle.loads(cp.driver_state))
        self.driver.load_state_dict(state)
        pending = legacy_pending if legacy_pending is not None else self.store.pending()
        self._restored = [pending_candidate(p) for p in pending] or None
        restore_rng(cp.rng_state)
        self.state = _State(
            generation=cp.generation + 1,
            n_candidates=cp.n_candidates,
            n_evals=cp.n_evals,
            n_failed=sum(1 for t in trials if not t.ok),
            elapsed=cp.elapsed,
            n_item_evals=self.store.item_evals(),
        )
        return True

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self) -> Progress:
        t_start, elapsed0 = time.monotonic(), self.state.elapsed

        def tick() -> None:
            self.session_elapsed = time.monotonic() - t_start
            self.state.elapsed = elapsed0 + self.session_elapsed

        reason = None
        record_stop(self.store, None)  # a kill from here on must not read as the last stop
        while True:
            tick()
            reason = self._stop_reason()
            if reason:
                break
            self._generation()
            tick()
            self._commit()
            if self.on_generation:
                self.on_generation(self.progress())
        s = self.state
        record_stop(self.store, reason, stop_detail(reason, s, self.budget.max_item_evals))
        return dataclasses.replace(self.progress(), stop_reason=reason)

    def progress(self) -> Progress:
        best = self.top[0] if self.top else None
        s = self.state
        return Progress(
            generation=s.generation,
            n_candidates=s.n_candidates,
            n_evals=s.n_evals,
            n_failed=s.n_failed,
            best_fitness=best.fitness if best else math.nan,
            best_digest=best.digest if best else None,
            elapsed=s.elapsed,
            n_item_evals=s.n_item_evals,
            best_estimate=best is not None and best.idx in self._partial,
        )

    def _stop_reason(self) -> str | None:
        b, s = self.budget, self.state
        if self.stop_event.is_set():
            return "interrupted"
        if b.max_evals is not None and s.n_evals >= b.max_evals:
            return "max_evals"
        if b.max_item_evals is not None and s.n_item_evals >= b.max_item_evals:
            return "max_item_evals"
        if b.max_candidates is not None and s.n_candidates >= b.max_candidates:
            return "max_candidates"
        if b.max_seconds is not None and self.session_elapsed >= b.max_seconds:
            return "max_seconds"
        if b.max_total_seconds is not None and s.elapsed >= b.max_total_seconds:
            return "max_total_seconds"
        if self.session_fresh >= ALL_FAILED_AFTER and self.session_ok == 0:
            return "all_failed"
        if self.driver.stop():
            return "driver"
        return None

    def _batch_size(self, running: int = 0) -> int | None:
        """None (the driver's natural batch), except that a driver able to ask ahead gets at
        most what the evaluation budget has left, counting the ``running`` evaluations of the
        batch in flight as spent, so random search and Optuna stop on the budget exactly
        (CMA-ES keeps whole generations). ``Driver.batch_size`` None: any number."""
        if not self.driver.can_ask_ahead or self.budget.max_evals is None:
            return None
        left = max(1, self.budget.max_evals - self.state.n_evals - running)
        natural = self.driver.batch_size
        return left if natural is None else min(int(natural), left)

    def _generation(self) -> None:
        batch = self._ahead if self._ahead is not None else self._submit(self._take_asked())
        cands, recipes, tickets = batch
        self._ahead = None
        if self.driver.can_ask_ahead:
            self._ahead = self._ask_ahead(recipes, tickets)
        records, results = self._evaluate(cands, recipes, tickets)
        fitness = told_values(self.driver, results, self.constraints)
        wanted = tell_wanted(self.evaluator, cands, recipes)  # what candidates asked for
        if self.constraints is not None and getattr(self.driver, "native_constraints", False):
            self.driver.tell_constraints(cands, constraint_values(results, self.constraints))
        details = [objective_entries(r.result, self.constraints) for r in results]
        self.driver.tell(cands, fitness, details, **wanted)
        self._pending = _Told(records, results, recipes)

    def _take_asked(self) -> list[Candidate]:
        """The batch resume found in the store's pending table, else a fresh ask."""
        restored, self._restored = self._restored, None
        return restored or self._ask()

    def _ask(self, running: int = 0) -> list[Candidate]:
        return self.driver.ask(self._batch_size(running))

    def _ask_ahead(
        self, recipes: Sequence[Recipe | Exception], tickets: dict | None
    ) -> _Batch | None:
        """Batch g+1, asked while batch g (``recipes``) is still to be evaluated, unless the
        budget will be spent by g. Not the stop request: whether g+1 is asked before g is told
        must not depend on when a signal came, or a resumed run would propose differently."""
        busy = {r.digest() for r in recipes if isinstance(r, Recipe)}
        # evaluations batch g will add: the same count with or without streaming
        running = len(tickets) if tickets is not None else len(busy - set(self.scored))
        b, s = self.budget, self.state
        if b.max_evals is not None and s.n_evals + running >= b.max_evals:
            return None
        if b.max_candidates is not None and s.n_candidates + len(recipes) >= b.max_candidates:
            return None
        return self._submit(self._ask(running), busy)

    def _submit(self, cands: list[Candidate], busy: set[str] = frozenset()) -> _Batch:
        """Decode, and with a streaming evaluator submit, the recipes ``_evaluate`` will need:
        not scored before, not in the batch still running, first of their digest here."""
        recipes = [self._decode(c) for c in cands]
        if not self._streaming:
            return _Batch(cands, recipes, None)
        tickets: dict[str, int] = {}
        for r in recipes:
            if not isinstance(r, Recipe):
                continue
            d = r.digest()
            if d not in self.scored and d not in busy and d not in tickets:
                tickets[d] = self.evaluator.submit(r)
        return _Batch(cands, recipes, tickets)

    def _decode(self, c: Candidate) -> Recipe | Exception:
        try:
            return self.space.decode(c.x)
        except Exception as err:  # noqa: BLE001 - an undecodable candidate is a failure, not a crash
            return err

    def _evaluate(
        self,
        cands: Sequence[Candidate],
        recipes: Sequence[Recipe | Exception],
        tickets: dict[str, int] | None = None,
    ) -> tuple[list[_CandRec], list[JobResult]]:
        gen = self.state.generation
        results: list[JobResult | None] = [None] * len(cands)
        reused: list[int | None] = [None] * len(cands)
        first_in_gen: dict[str, int] = {}
        todo: list[int] = []
        for i, (_c, r) in enumerate(zip(cands, recipes, strict=True)):
            if isinstance(r, Exception):
                results[i] = JobResult.failed("", f"decode failed: {type(r).__name__}: {r}")
                continue
            d = r.digest()
            if d in self.scored:
                reused[i] = self.scored[d]
                results[i] = _as_reused(self.store.job_result(self.scored[d]))
            elif d in first_in_gen:
                reused[i] = cands[first_in_gen[d]].index
            else:
                first_in_gen[d] = i
                todo.append(i)
        fresh, spent = self._score([recipes[i] for i in todo], tickets)
        race_meta = {}
        for i, res, n in zip(todo, fresh, spent, strict=True):
            results[i] = res
            if self.racer is not None:
                race_meta[i] = {RACING_META: racing_meta(n, self.racer.pool.size)}
        pos = {c.index: i for i, c in enumerate(cands)}
        for i, src in enumerate(reused):
            if results[i] is None and src is not None:
                results[i] = _as_reused(results[pos[src]])
        records = [
            _CandRec(
                idx=c.index,
                generation=gen,
                digest=r.digest() if isinstance(r, Recipe) else "",
                genes=tuple(float(v) for v in np.asarray(c.x, dtype=float).reshape(-1)),
                recipe_yaml=r.to_yaml() if isinstance(r, Recipe) else "",
                reused_from=reused[i],
                meta={**jsonable_meta(c.meta), **race_meta.get(i, {})},
            )
            for i, (c, r) in enumerate(zip(cands, recipes, strict=True))
        ]
        fresh = len(todo) + sum(1 for r in recipes if isinstance(r, Exception))
        self.state.n_evals += fresh
        self.session_fresh += fresh
        self.session_ok += sum(1 for i in todo if results[i].ok)
        self.state.n_item_evals += sum(spent)
        return records, [r for r in results if r is not None]

    def _score(
        self, recipes: list[Recipe], tickets: dict[str, int] | None
    ) -> tuple[list[JobResult], list[int]]:
        """Results of the fresh recipes (collected from the stream when they were submitted
        ahead) and the items each was scored on."""
        if tickets is not None:
            results = [self._collect(tickets[r.digest()]) for r in recipes]
            return results, [r.item_evals for r in results]
        if self.racer is None:
            results = self.evaluator.evaluate(recipes)
            return results, [r.item_evals for r in results]
        self.racer.start_generation(self.state.generation)
        values, weights = self._archive_values()
        out = self.racer.race(self.evaluator, recipes, values, weights)
        return out.results, out.items

    def _collect(self, ticket: int) -> JobResult:
        """A submitted recipe's result; results of others that finish first wait in _early."""
        while ticket not in self._early:
            for t, res in self.evaluator.poll():
                self._early[t] = res
        return self._early.pop(ticket)

    def _archive_values(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The archive members' item values and weights in racing order (read from the store
        once per member)."""
        if self._estimates:  # archive_places 0: no archive place is raced for
            return [], []
        pool = self.racer.pool
        if pool is not self._values_pool:  # racing order "generation": a new order
            self._values, self._values_pool = {}, pool
        self._values = {
            e.idx: self._values[e.idx]
            if e.idx in self._values
            else _item_arrays(pool, self.store, e.idx)
            for e in self.top
            if math.isfinite(e.fitness)
        }
        return [v for v, _ in self._values.values()], [w for _, w in self._values.values()]

    # ---- the commit ------------------------------------------------------------------------------
    def _commit(self) -> None:
        """Crash-safe order: new archive folders are written (atomically) before the
        transaction and dropped members removed after it, so a kill at any point leaves extra
        folders at most, and ``restore``'s reconcile makes them match the store again."""
        told, self._pending = self._pending, None
        records, results = told.records, told.results
        for rec, r in zip(records, told.recipes, strict=True):
            if isinstance(r, Recipe):
                self.recipes.setdefault(rec.digest, r)
        # racing: a recipe scored on part of the items enters the archive only under
        # archive_places 0
        short = {rec.digest for rec in records if is_partial(rec.meta)}
        rank = self._shortlist if self._estimates else self._ranked
        top = rank(records, results, short)
        self.archive.materialize(top, self.recipes)
        s = self.state
        s.n_candidates += len(records)
        s.n_failed += sum(1 for r in results if not r.ok)
        cp = Checkpoint(
            generation=s.generation,
            driver_state=pickle.dumps(self.driver.state_dict()),
            rng_state=capture_rng(),
            n_candidates=s.n_candidates,
            n_evals=s.n_evals,
            elapsed=s.elapsed,
        )
        ahead = [pending_record(c) for c in self._ahead.cands] if self._ahead else []
        self.store.commit_generation(cp, records, results, top, ahead)
        self.archive.evict(top)
        self.top = top
        keep = {e.digest for e in top}
        self.recipes = {d: r for d, r in self.recipes.items() if d in keep}
        for rec in records:
            if rec.reused_from is None and rec.digest and rec.digest not in short:
                self.scored.setdefault(rec.digest, rec.idx)
        s.generation += 1

    def _ranked(
        self, records: Sequence[_CandRec], results: Sequence[JobResult], short: set[str]
    ) -> list:
        rows = [(e.fitness, e.idx, e.digest) for e in self.top]
        rows += [
            (archive_fitness(res, self.constraints), rec.idx, rec.digest)
            for rec, res in zip(records, results, strict=True)
            if rec.digest and rec.digest not in short
        ]
        return rank_top_k(rows, self.archive.top_k)

    def _shortlist(
        self, records: Sequence[_CandRec], results: Sequence[JobResult], short: set[str]
    ) -> list:
        """The archive under racing.archive_places 0: the best by fitness, means over part of
        the items included; a digest scored in full (now or before) counts by that score."""
        fresh = {r.digest for r in records if r.digest and r.digest not in short}

        def full(digest: str) -> bool:  # scored in full, now or before (no copy of scored)
            return digest in fresh or digest in self.scored

        self._partial |= {r.idx for r in records if r.digest in short}
        rows = [
            (e.fitness, e.idx, e.digest)
            for e in self.top
            if e.idx not in self._partial or not full(e.digest)
        ]
        rows += [
            (archive_fitness(res, self.constraints), rec.idx, rec.digest)
            for rec, res in zip(records, results, strict=True)
            if rec.digest and (rec.digest not in short or not full(rec.digest))
        ]
        return rank_top_k(rows, self.archive.top_k)


class _Batch(NamedTuple):
    """Asked candidates, their decoded recipes, and (streaming) digest -> evaluator ticket."""

    cands: list[Candidate]
    recipes: list[Recipe | Exception]
    tickets: dict[str, int] | None


class _Told(NamedTuple):
    """A told generation waiting for its commit."""

    records: list[_CandRec]
    results: list[JobResult]
    recipes: list[Recipe | Exception]


def _item_arrays(pool: Any, store: RunStore, idx: int) -> tuple[np.ndarray, np.ndarray]:
    """A fully scored member's item values and weights (racing), from its stored result."""
    result = store.eval_result(idx)
    return pool.full_values(result), pool.full_weights(result)


def _as_reused(r: JobResult) -> JobResult:
    return dataclasses.replace(r, seconds=0.0, worker="reused")
