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


def parse_options(name: str, params_cls: type, options: dict, required: dict[str, str]) -> object:
    """``params_cls(**options)`` for a frozen dataclass of driver options: unknown keys and
    missing ``required`` ones (key -> what it means) are rejected naming ``driver.options``."""
    from dataclasses import fields

    known = {f.name for f in fields(params_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserInputError(
            f"{name}: unknown driver.options {unknown}; valid: {', '.join(sorted(known))}"
        )
    for key, meaning in required.items():
        if key not in options:
            raise UserInputError(f"{name}: driver.options.{key} ({meaning}) is required")
    return params_cls(**options)
