"""Random search: uniform samples in the box — the baseline every driver must beat
(Bergstra & Bengio 2012, "Random Search for Hyper-Parameter Optimization")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers._common import check_tell, generator_at
from evomerge.drivers.base import Candidate, Driver, register_driver
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
class RandomState:
    """Everything a resume needs; ``tell`` and ``ask`` return a new one. The state dict is its
    fields by name (the keys checkpoints have always had)."""

    rng: dict  # the PCG64 bit generator's state (``Generator.bit_generator.state``)
    next: int  # the ask counter
    pending: dict  # index -> Candidate asked and not yet told
    best: tuple[Candidate, float] | None


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
        rng = np.random.default_rng(seed).bit_generator.state
        self.state = RandomState(rng=rng, next=0, pending={}, best=None)

    def racing_need(self) -> int:
        return 1  # only the best matters

    def ask(self, n: int | None = None) -> list[Candidate]:
        s, out = self.state, []
        rng = generator_at(s.rng)
        for i in range(s.next, s.next + (n or self.batch_size)):
            if i == 0 and self.include_x0:
                x = self.x0.copy()
            else:
                x = rng.uniform(self.lower, self.upper)
            out.append(Candidate(i, x))
        pending = {**s.pending, **{c.index: c for c in out}}
        self.state = replace(
            s, rng=rng.bit_generator.state, next=s.next + len(out), pending=pending
        )
        return out

    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[float],
        details: Sequence[EvalResult | None] | None = None,
    ) -> None:
        s = self.state
        values = check_tell(self.name, candidates, fitness, s.pending)
        pending, best = dict(s.pending), s.best
        for c, f in zip(candidates, values):
            del pending[c.index]
            if not math.isnan(f) and (best is None or f > best[1]):
                best = (c, f)
        self.state = replace(s, pending=pending, best=best)

    def stop(self) -> bool:
        return False

    @property
    def best(self) -> tuple[Candidate, float] | None:
        return self.state.best

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {"rng": s.rng, "next": s.next, "pending": dict(s.pending), "best": s.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = RandomState(
            rng=state["rng"], next=state["next"], pending=dict(state["pending"]), best=state["best"]
        )
