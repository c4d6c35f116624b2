"""Random search: uniform samples in the box — the baseline every driver must beat
(Bergstra & Bengio 2012, "Random Search for Hyper-Parameter Optimization")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers._common import check_tell
from evomerge.drivers.base import Candidate, Driver, register_driver
from evomerge.errors import UserInputError
from evomerge.results import EvalResult


@register_driver
class RandomSearch(Driver):
    name = "random"
    #: One line per driver.options key, for docs/config.md (evomerge schema).
    option_help: ClassVar[dict[str, str]] = {
        "batch_size": "uniform samples asked per generation",
        "include_x0": "evaluate the space's starting point first",
    }
    can_ask_ahead = True

    def __init__(
        self,
        dim: int,
        lower: np.ndarray,
        upper: np.ndarray,
        x0: np.ndarray,
        *,
        seed: int,
        batch_size: int = 8,
        include_x0: bool = True,
    ) -> None:
        super().__init__(dim, lower, upper, x0, seed=seed)
        if not (np.all(np.isfinite(self.lower)) and np.all(np.isfinite(self.upper))):
            raise UserInputError("random: needs finite bounds on every gene")
        self.batch_size = int(batch_size)
        self.include_x0 = include_x0
        self._rng = np.random.default_rng(seed)
        self._next = 0
        self._pending: dict[int, Candidate] = {}
        self._best: tuple[Candidate, float] | None = None

    def racing_need(self) -> int:
        return 1  # only the best matters

    def ask(self, n: int | None = None) -> list[Candidate]:
        out = []
        for _ in range(n or self.batch_size):
            if self._next == 0 and self.include_x0:
                x = self.x0.copy()
            else:
                x = self._rng.uniform(self.lower, self.upper)
            c = Candidate(self._next, x)
            self._pending[c.index] = c
            self._next += 1
            out.append(c)
        return out

    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[float],
        details: Sequence[EvalResult | None] | None = None,
    ) -> None:
        values = check_tell(self.name, candidates, fitness, self._pending)
        for c, f in zip(candidates, values):
            del self._pending[c.index]
            if not math.isnan(f) and (self._best is None or f > self._best[1]):
                self._best = (c, f)

    def stop(self) -> bool:
        return False

    @property
    def best(self) -> tuple[Candidate, float] | None:
        return self._best

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self._rng.bit_generator.state,
            "next": self._next,
            "pending": dict(self._pending),
            "best": self._best,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._next = state["next"]
        self._pending = dict(state["pending"])
        self._best = state["best"]
