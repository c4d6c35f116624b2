"""Random search: uniform samples in the box — the baseline every driver must beat
(Bergstra & Bengio 2012, "Random Search for Hyper-Parameter Optimization")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers._common import generator_at
from evomerge.drivers.base import Candidate, Driver, Ledger, register_driver
from evomerge.drivers.options import invalid, option
from evomerge.errors import UserInputError
from evomerge.results import EvalResult


@dataclass(frozen=True)
class RandomOptions:
    batch_size: int = option(8, "uniform samples asked per generation")
    include_x0: bool = option(True, "evaluate the space's starting point first")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise invalid("batch_size", self.batch_size, "ask at least 1 sample per generation")


@dataclass(frozen=True)
class RandomState(Ledger):
    """Everything a resume needs; ``tell`` and ``ask`` return a new one. The state dict is its
    fields by name (the keys checkpoints have always had: the ledger's, and ``rng``)."""

    rng: dict  # the PCG64 bit generator's state (``Generator.bit_generator.state``)


@register_driver
class RandomSearch(Driver):
    name = "random"
    options_cls: ClassVar[type] = RandomOptions
    can_ask_ahead = True

    def __init__(
        self,
        dim: int,
        lower: np.ndarray,
        upper: np.ndarray,
        x0: np.ndarray,
        *,
        seed: int,
        **options: Any,
    ) -> None:
        super().__init__(dim, lower, upper, x0, seed=seed, **options)
        if not (np.all(np.isfinite(self.lower)) and np.all(np.isfinite(self.upper))):
            raise UserInputError("random: needs finite bounds on every gene")
        self.batch_size = int(self.options.batch_size)
        self.include_x0 = self.options.include_x0
        self.state = RandomState(rng=np.random.default_rng(seed).bit_generator.state)

    def racing_need(self) -> int:
        return 1  # only the best matters

    def ask(self, n: int | None = None) -> list[Candidate]:
        rng, out = generator_at(self.state.rng), []
        for _ in range(n or self.batch_size):
            if self.state.next == 0 and self.include_x0:
                out.append(self._issue(self.x0.copy()))
            else:
                out.append(self._issue(rng.uniform(self.lower, self.upper)))
        self.state = replace(self.state, rng=rng.bit_generator.state)
        return out

    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[float],
        details: Sequence[EvalResult | None] | None = None,
    ) -> None:
        self._settle(candidates, self._check_tell(candidates, fitness))

    def stop(self) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.state.rng, **self.state.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = RandomState(rng=state["rng"], **Ledger.saved(state))
