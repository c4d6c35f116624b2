"""The evaluator contract shared by the serial and the Ray evaluator.

The per-candidate job never raises: any exception, timeout or NaN score comes back as a
``JobResult`` (``evomerge.results``) with status FAIL and the error text, so the search records it and goes on.
``evaluate`` returns results in the order of its input, whatever order workers finish in, so
the archive never depends on scheduling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from evomerge.recipe import Recipe
from evomerge.results import FAIL, OK, JobResult

__all__ = ["FAIL", "OK", "Evaluator", "JobResult"]  # JobResult's home is evomerge.results


class Evaluator(ABC):
    """Scores recipes. Implementations: ``SerialEvaluator`` (in process), ``RayEvaluator``."""

    @abstractmethod
    def evaluate(self, recipes: Sequence[Recipe]) -> list[JobResult]:
        """Score every recipe; results in input order; never raises for a bad candidate."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers and resident models."""

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
