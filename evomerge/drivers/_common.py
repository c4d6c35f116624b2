"""Input checks shared by the drivers' ``tell``: bad input is rejected with a clear error."""

from __future__ import annotations

import math
from collections.abc import Sequence

from evomerge.drivers.base import Candidate
from evomerge.errors import UserInputError


def check_tell(
    name: str,
    candidates: Sequence[Candidate],
    fitness: Sequence[float],
    pending: dict[int, Candidate],
) -> list[float]:
    """Validate a tell against the asked-but-untold candidates; return float fitness (NaN ok)."""
    if len(candidates) != len(fitness):
        raise UserInputError(
            f"{name}.tell: {len(candidates)} candidates but {len(fitness)} fitness values"
        )
    values = []
    for c, f in zip(candidates, fitness):
        if c.index not in pending:
            raise UserInputError(
                f"{name}.tell: candidate {c.index} was not asked or was already told"
            )
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
