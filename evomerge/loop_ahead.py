"""The search loop for drivers that can ask ahead (random, Optuna, steady-state M2N2): no idle
workers at the generation barrier.

``SearchLoop`` asks a batch, waits for all of it, tells, commits. Here the next batch is asked
and submitted *before* the current one is told, so with a streaming evaluator (``submit`` /
``poll``, e.g. the Ray evaluator) workers that finish the current batch early start on the next
one instead of waiting for the slowest candidate. The schedule is fixed — ask batch g+1, then
tell batch g, then commit g — whatever the evaluator and the number of workers, so the archive
does not depend on either (the serial evaluator simply runs batch g+1 later). Results are still
told in ask order, and one generation is still one transaction.

Exact resume: at the commit of generation g the driver has already asked batch g+1, so the
checkpoint stores those candidates with the driver state; a resume re-submits them instead of
asking again. Dedupe spans the two batches: a recipe of batch g+1 that batch g is evaluating is
not submitted again; it is reused from the store once g is committed (as ``SearchLoop`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.drivers.base import Candidate
from evomerge.loop import SearchLoop, told_values
from evomerge.recipe import Recipe
from evomerge.workers.base import Evaluator, JobResult
from evomerge.workers.wants import tell_wanted

_KEY = "__ask_ahead__"


class _StateWithPending:
    """The driver, with the asked-but-untold batch saved alongside its state_dict."""

    def __init__(self, driver: Any, loop: AskAheadLoop) -> None:
        self._driver, self._loop = driver, loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    def state_dict(self) -> dict[str, Any]:
        ahead = self._loop._ahead
        # wants only when there are some: the state of a driver without any stays as it was
        pending = [
            (c.index, c.x, c.meta, *((c.wants,) if c.wants else ()))
            for c in (ahead[0] if ahead is not None else [])
        ]
        return {_KEY: {"driver": self._driver.state_dict(), "pending": pending}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if _KEY not in state:  # a checkpoint written by the plain loop
            self._driver.load_state_dict(state)
            return
        self._driver.load_state_dict(state[_KEY]["driver"])
        self._loop._restored = [
            Candidate(index=p[0], x=np.asarray(p[1]), meta=dict(p[2]), wants=_wants_of(p))
            for p in state[_KEY]["pending"]
        ]


def _wants_of(pending: tuple) -> dict:
    return dict(pending[3]) if len(pending) > 3 else {}


class _Submitted(Evaluator):
    """What ``SearchLoop._evaluate`` sees while collecting a batch: results of the recipes that
    were submitted when the batch was asked (or, without streaming, evaluated now)."""

    def __init__(self, loop: AskAheadLoop, tickets: dict[str, int] | None) -> None:
        self.loop, self.tickets = loop, tickets

    def evaluate(
        self, recipes: Sequence[Recipe], items: Sequence[dict[str, list[int]]] | None = None
    ) -> list[JobResult]:
        if self.tickets is None:
            real = self.loop._real
            return real.evaluate(recipes) if items is None else real.evaluate(recipes, items)
        return [self.loop._result(self.tickets[r.digest()]) for r in recipes]


class AskAheadLoop(SearchLoop):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.driver = _StateWithPending(self.driver, self)
        self._real: Evaluator = self.evaluator
        # racing decides a generation's next slices from its last ones: no streaming ahead
        streams = hasattr(self._real, "submit") and hasattr(self._real, "poll")
        self._streaming = streams and self.racer is None
        self._ahead: tuple[list[Candidate], list[Recipe | Exception], dict | None] | None = None
        self._restored: list[Candidate] | None = None
        self._early: dict[int, JobResult] = {}

    # ---- one generation ------------------------------------------------------------------------
    def _generation(self) -> None:
        if self._ahead is None:
            cands, self._restored = self._restored, None
            self._ahead = self._submit(cands if cands else self.driver.ask(self._batch_size()))
        cands, recipes, tickets = self._ahead
        self._ahead = None
        busy = {r.digest() for r in recipes if isinstance(r, Recipe)}
        # evaluations this batch will add: the same count with or without streaming
        running = len(tickets) if tickets is not None else len(busy - set(self.scored))
        if self._may_ask_ahead(running, len(recipes)):
            self._ahead = self._submit(self.driver.ask(self._batch_size(running)), busy)
        self.evaluator = _Submitted(self, tickets)
        try:
            records, results = self._evaluate(cands, recipes)
        finally:
            self.evaluator = self._real
        fitness = told_values(self.driver, results)
        wanted = tell_wanted(self.evaluator, cands, recipes)  # what candidates asked for
        self.driver.tell(cands, fitness, [r.result for r in results], **wanted)
        self._pending = (records, results, recipes)

    def _submit(self, cands: list[Candidate], busy: set[str] = frozenset()) -> tuple:
        """Decode and (with a streaming evaluator) submit the recipes ``_evaluate`` will need:
        not scored before, not in the batch still running, first of their digest here."""
        recipes = [self._decode(c) for c in cands]
        if not self._streaming:
            return cands, recipes, None
        tickets: dict[str, int] = {}
        for r in recipes:
            if not isinstance(r, Recipe):
                continue
            d = r.digest()
            if d not in self.scored and d not in busy and d not in tickets:
                tickets[d] = self._real.submit(r)
        return cands, recipes, tickets

    def _may_ask_ahead(self, running: int, n_cands: int) -> bool:
        # Not the stop request: whether g+1 is asked before g is told must not depend on when a
        # signal came, or a resumed run would propose differently (the batch is checkpointed).
        b, s = self.budget, self.state
        if b.max_evals is not None and s.n_evals + running >= b.max_evals:
            return False
        return b.max_candidates is None or s.n_candidates + n_cands < b.max_candidates

    def _batch_size(self, running: int = 0) -> int | None:
        """As ``SearchLoop._batch_size``, counting the evaluations still running as spent."""
        if self.budget.max_evals is None:
            return super()._batch_size()
        self.state.n_evals += running
        try:
            return super()._batch_size()
        finally:
            self.state.n_evals -= running

    def _result(self, ticket: int) -> JobResult:
        while ticket not in self._early:
            for t, res in self._real.poll():
                self._early[t] = res
        return self._early.pop(ticket)
