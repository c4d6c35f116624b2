"""What the frank_wolfe and adamerging drivers share: one candidate at a time over the pool
space, each (but the last) wanting the gradient at its genes, and a state small enough to
checkpoint whole.

FW-Merging (Chen et al., ICCV 2025) and AdaMerging (Yang et al., ICLR 2024) both step on the
gradient of an objective with respect to task-arithmetic coefficients. ``ask`` returns the
pending candidate with ``wants = {"gradient": GradientRequest}`` (``evomerge.workers.gradient``);
a worker computes it like any evaluation, and ``tell(..., wanted=[{"gradient": Alignment}])``
steps. A failed gradient leaves the coefficients where they are: the next ask repeats them, and
after ``max_retries`` failures in a row the driver stops. The state is a frozen dataclass with
``phase``, ``pending``, ``next_index``, ``retries``, ``best_*`` and ``stop_reason`` besides each
method's own fields; ``asdict`` of it is the state dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from typing import Any

import numpy as np

from evomerge.drivers.base import Candidate, Driver
from evomerge.errors import UserInputError
from evomerge.fitness.result import EvalResult
from evomerge.workers.gradient import Alignment, GradientRequest


class PoolGradientDriver(Driver):
    params: Any  # a frozen dataclass with n_members and max_retries
    state: Any
    n_groups: int

    # ---- what each method defines ---------------------------------------------------------------
    def _genes(self) -> np.ndarray:
        raise NotImplementedError

    def _final(self) -> bool:
        """True when the pending candidate is the last one: scored, no gradient."""
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
        s = self.state
        if s.phase == "done":
            return []
        if s.pending < 0:
            self.state = s = replace(s, pending=s.next_index, next_index=s.next_index + 1)
        x = self._genes()
        wants = {} if self._final() else {"gradient": self._request(s.pending, x)}
        return [Candidate(index=s.pending, x=x, meta=self._meta(), wants=wants)]

    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[float],
        details: Sequence[EvalResult | None] | None = None,
        *,
        wanted: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        cand, f = self._check_tell(candidates, fitness)
        al = self._check_gradient(wanted)
        s = self.state
        if not math.isnan(f) and f > s.best_f:
            s = replace(s, best_index=cand.index, best_f=f, best_x=np.array(cand.x, dtype=float))
        s = replace(s, pending=-1)
        self.state = s
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

    def _check_tell(
        self, candidates: Sequence[Candidate], fitness: Sequence[float]
    ) -> tuple[Candidate, float]:
        name, pending = self.name, self.state.pending
        if len(candidates) != len(fitness):
            raise UserInputError(
                f"{name}.tell: {len(candidates)} candidates but {len(fitness)} fitness values"
            )
        if len(candidates) != 1:
            raise UserInputError(f"{name} asks one candidate at a time; tell got {len(candidates)}")
        cand, f = candidates[0], fitness[0]
        if pending < 0 or cand.index != pending:
            raise UserInputError(
                f"{name}.tell: candidate {cand.index} is not the pending one "
                f"({pending if pending >= 0 else 'none'}): not asked, or already told"
            )
        if not np.array_equal(np.asarray(cand.x, dtype=float), self._genes()):
            raise UserInputError(f"{name}.tell: candidate {cand.index}'s genes differ from the ask")
        if f is None or isinstance(f, bool):
            raise UserInputError(f"{name}.tell: fitness {f!r}; tell NaN for a failed candidate")
        try:
            f = float(f)
        except (TypeError, ValueError):
            raise UserInputError(
                f"{name}.tell: fitness {f!r} is not a number (tell NaN for a failure)"
            ) from None
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

    @property
    def best(self) -> tuple[Candidate, float] | None:
        s = self.state
        if s.best_index < 0:
            return None
        return Candidate(index=s.best_index, x=s.best_x.copy()), s.best_f

    def state_dict(self) -> dict[str, Any]:
        d = {
            k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in asdict(self.state).items()
        }
        return {"version": 1, "params": asdict(self.params), "n_groups": self.n_groups, "state": d}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        name = self.name
        if not isinstance(state, dict) or state.get("version") != 1 or "state" not in state:
            raise UserInputError(f"not a {name} state dict (version 1)")
        if state["params"] != asdict(self.params) or state["n_groups"] != self.n_groups:
            raise UserInputError(
                f"the saved {name} state belongs to other driver options or another pool; "
                "resume with the run's original configuration"
            )
        saved, cls = state["state"], type(self.state)
        missing = {f.name for f in fields(cls)} - set(saved)
        if missing:
            raise UserInputError(f"{name} state dict lacks {sorted(missing)}")
        self.state = cls(
            **{
                k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                for k, v in saved.items()
            }
        )


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
