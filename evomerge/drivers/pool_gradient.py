"""What the frank_wolfe and adamerging drivers share: one candidate at a time over the pool
space, each (but the last) wanting the gradient at its genes, and a state small enough to
checkpoint whole.

FW-Merging (Chen et al., ICCV 2025) and AdaMerging (Yang et al., ICLR 2024) both step on the
gradient of an objective with respect to task-arithmetic coefficients. ``ask`` returns one
candidate with ``wants = {"gradient": GradientRequest}`` (``evomerge.workers.gradient``); a
worker computes it like any evaluation, and ``tell(..., wanted=[{"gradient": Alignment}])``
steps. Asked again before the tell, ``ask`` returns that same candidate: these methods are
sequential. A failed gradient leaves the coefficients where they are: the next ask repeats them
(as a new candidate), and after ``max_retries`` failures in a row the driver stops.

The ask counter, the pending candidate and the best are the base's ``Ledger``; each method's
frozen state extends it with ``phase``, ``retries``, ``stop_reason`` and its own fields. The
state dict is version 2: ``{"version", "params", "n_groups", "state"}`` with the state's fields
by name (the ledger's ``next``, ``pending``, ``best`` among them). Version 1, written before
these drivers used the ledger, kept ``next_index``, ``pending`` (an index, -1 for none) and
``best_index``/``best_f``/``best_x``; it still loads (``_from_v1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from typing import Any

import numpy as np

from evomerge.drivers.base import Candidate, Driver, Ledger
from evomerge.errors import UserInputError
from evomerge.fitness.result import EvalResult
from evomerge.workers.gradient import Alignment, GradientRequest

#: the state-dict version written; 1 still loads
STATE_VERSION = 2
_LEDGER = {f.name for f in fields(Ledger)}


class PoolGradientDriver(Driver):
    params: Any  # a frozen dataclass with n_members and max_retries
    state: Any  # a frozen Ledger subclass with phase, retries and stop_reason
    n_groups: int

    # ---- what each method defines ---------------------------------------------------------------
    def _genes(self) -> np.ndarray:
        raise NotImplementedError

    def _final(self) -> bool:
        """True when the next candidate is the last one: scored, no gradient."""
        raise NotImplementedError

    def _meta(self) -> dict[str, Any]:
        raise NotImplementedError

    def _request(self, index: int, x: np.ndarray) -> GradientRequest:
        raise NotImplementedError

    def _step(self, s: Any, al: Alignment) -> Any:
        """The state after a good gradient (``s`` has the tell's bookkeeping applied)."""
        raise NotImplementedError

    def _done_reason(self, s: Any) -> str:
        raise NotImplementedError

    # ---- ask / tell ----------------------------------------------------------------------------
    def ask(self, n: int | None = None) -> list[Candidate]:
        if self.state.phase == "done":
            return []
        if self.state.pending:  # asked, not told: the same candidate again
            return list(self.state.pending.values())
        return [self._next_candidate()]

    def _next_candidate(self) -> Candidate:
        x = self._genes()
        wants = {} if self._final() else {"gradient": self._request(self.state.next, x)}
        return self._issue(x, self._meta(), wants)

    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[float],
        details: Sequence[EvalResult | None] | None = None,
        *,
        wanted: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        cand, f = self._check_one(candidates, fitness)
        al = self._check_gradient(wanted)
        self._told(cand)
        # best keeps the genes only: the meta and the gradient request are the ask's business
        self._note_best(Candidate(cand.index, np.array(cand.x, dtype=float)), f)
        s = self.state
        if self._final():
            self.state = replace(s, phase="done", stop_reason=self._done_reason(s))
        elif al is None or not al.ok:
            why = "no gradient told" if al is None else (al.error or "non-finite gradient")
            retries = s.retries + 1
            done = retries > self.params.max_retries
            # a failed gradient leaves the coefficients: the next ask repeats them
            self.state = replace(
                s,
                retries=retries,
                phase="done" if done else "run",
                stop_reason=f"gradient failed {retries} times: {why}" if done else "",
            )
        else:
            self.state = self._step(replace(s, retries=0), al)

    def _check_one(
        self, candidates: Sequence[Candidate], fitness: Sequence[float]
    ) -> tuple[Candidate, float]:
        """The base's checks (counts, pending, numbers), one candidate, the asked genes, and a
        finite fitness or NaN. Changes nothing."""
        name, pending = self.name, self.state.pending
        if len(candidates) == len(fitness) != 1:
            raise UserInputError(f"{name} asks one candidate at a time; tell got {len(candidates)}")
        if len(candidates) == 1 and candidates[0].index not in pending:
            raise UserInputError(
                f"{name}.tell: candidate {candidates[0].index} is not the pending one "
                f"({next(iter(pending), 'none')}): not asked, or already told"
            )
        (f,) = self._check_tell(candidates, fitness)
        cand = candidates[0]
        asked = pending[cand.index]
        if not np.array_equal(np.asarray(cand.x, dtype=float), asked.x):
            raise UserInputError(f"{name}.tell: candidate {cand.index}'s genes differ from the ask")
        if math.isinf(f):
            raise UserInputError(f"{name}.tell: fitness {f} is infinite; tell a failure as NaN")
        return cand, f

    def _check_gradient(self, wanted: Sequence[dict[str, Any]] | None) -> Alignment | None:
        if wanted is None:
            return None
        if len(wanted) != 1:
            raise UserInputError(f"{self.name}.tell: {len(wanted)} wanted answers for 1 candidate")
        al = (wanted[0] or {}).get("gradient")
        if al is None:
            return None
        if not isinstance(al, Alignment):
            raise UserInputError(
                f"{self.name}.tell: wanted gradient must be an Alignment, got {type(al).__name__}"
            )
        if al.error is None:
            try:
                al.check_shape(self.params.n_members, self.n_groups)
            except ValueError as err:
                raise UserInputError(f"{self.name}.tell: {err}") from None
        return al

    # ---- the rest of the contract ---------------------------------------------------------------
    def stop(self) -> bool:
        return self.state.phase == "done"

    @property
    def stop_reason(self) -> str:
        return self.state.stop_reason

    def state_dict(self) -> dict[str, Any]:
        own = {f.name: _copy(getattr(self.state, f.name)) for f in fields(self.state)}
        return {
            "version": STATE_VERSION,
            "params": asdict(self.params),
            "n_groups": self.n_groups,
            "state": {**own, **self.state.state_dict()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        name = self.name
        version = state.get("version") if isinstance(state, dict) else None
        if version not in (1, STATE_VERSION) or "state" not in state:
            raise UserInputError(f"not a {name} state dict (version 1 or {STATE_VERSION})")
        if state["params"] != asdict(self.params) or state["n_groups"] != self.n_groups:
            raise UserInputError(
                f"the saved {name} state belongs to other driver options or another pool; "
                "resume with the run's original configuration"
            )
        saved, ask_again = (
            (state["state"], False) if version > 1 else _from_v1(name, state["state"])
        )
        cls = type(self.state)
        missing = {f.name for f in fields(cls)} - set(saved)
        if missing:
            raise UserInputError(f"{name} state dict lacks {sorted(missing)}")
        own = {k: _copy(v) for k, v in saved.items() if k not in _LEDGER}
        self.state = cls(**own, **Ledger.saved(saved))
        if ask_again:
            self._next_candidate()  # a v1 state held only the pending index: ask it again


def _from_v1(name: str, saved: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A version-1 state (its own counter, pending index and best) in version 2's keys, and
    whether a candidate was pending. A pending index (asked, not told; the old counter is then
    one past it) becomes the counter, and the loader asks that candidate again from the state,
    as the old ``ask`` rebuilt it."""
    old = {"next_index", "pending", "best_index", "best_f", "best_x"}
    if old - set(saved):
        raise UserInputError(f"{name} state dict (version 1) lacks {sorted(old - set(saved))}")
    pending = saved["pending"]
    best = None
    if saved["best_index"] >= 0:
        best = (Candidate(saved["best_index"], np.array(saved["best_x"])), saved["best_f"])
    rest = {k: v for k, v in saved.items() if k not in old}
    nxt = pending if pending >= 0 else saved["next_index"]
    return {**rest, "next": nxt, "pending": {}, "best": best}, pending >= 0


def _copy(v: Any) -> Any:
    return v.copy() if isinstance(v, np.ndarray) else v


def adam_step(
    lam: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Adam update (``step`` counts from 1); returns (lam, m, v). FW-Soft and AdaMerging
    both fit coefficients with it (the papers' optimiser)."""
    b1, b2 = betas
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    return lam - lr * m_hat / (np.sqrt(v_hat) + eps), m, v
