"""Shared by the drivers: the checks of ``tell`` (bad input is rejected with a clear error)
and the RNG of a frozen state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from evomerge.errors import UserInputError

if TYPE_CHECKING:  # the base imports these checks
    from evomerge.drivers.base import Candidate


def check_asked(
    name: str, candidates: Sequence[Candidate], fitness: Sequence[object], pending: dict
) -> None:
    """One fitness per candidate, and every candidate asked and not yet told."""
    if len(candidates) != len(fitness):
        raise UserInputError(
            f"{name}.tell: {len(candidates)} candidates but {len(fitness)} fitness values"
        )
    for c in candidates:
        if c.index not in pending:
            raise UserInputError(
                f"{name}.tell: candidate {c.index} was not asked or was already told"
            )


def check_tell(
    name: str,
    candidates: Sequence[Candidate],
    fitness: Sequence[float],
    pending: dict[int, Candidate],
) -> list[float]:
    """Validate a tell against the asked-but-untold candidates; return float fitness (NaN ok)."""
    check_asked(name, candidates, fitness, pending)
    values = []
    for c, f in zip(candidates, fitness):
        if f is None or isinstance(f, bool):
            raise UserInputError(
                f"{name}.tell: fitness of candidate {c.index} is {f!r}; tell NaN for a failure"
            )
        try:
            values.append(float(f))
        except (TypeError, ValueError):
            raise UserInputError(
                f"{name}.tell: fitness of candidate {c.index} is {f!r}, not a number"
            ) from None
    return values


def is_failure(f: float) -> bool:
    return math.isnan(f)


def generator_at(state: dict) -> np.random.Generator:
    """A numpy Generator positioned at a bit generator's saved state (``bit_generator.state``).

    Frozen driver states keep the RNG as that plain dict; each ask draws from a Generator made
    here and stores its new state, which continues exactly as one long-lived Generator would
    (the dict holds the whole PCG64 position, buffered 32-bit half included)."""
    rng = np.random.Generator(getattr(np.random, state["bit_generator"])())
    rng.bit_generator.state = state
    return rng
