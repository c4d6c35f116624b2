"""The evaluator contract shared by the serial and the Ray evaluator.

The per-candidate job never raises: any exception, timeout or NaN score comes back as a
``JobResult`` (``evomerge.results``) with status FAIL and the error text, so the search records it and goes on.
``evaluate`` returns results in the order of its input, whatever order workers finish in, so
the archive never depends on scheduling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from evomerge.recipe import Recipe
from evomerge.results import FAIL, OK, JobResult

__all__ = ["FAIL", "OK", "Evaluator", "JobResult"]  # JobResult's home is evomerge.results


class Evaluator(ABC):
    """Scores recipes. Implementations: ``SerialEvaluator`` (in process), ``RayEvaluator``."""

    @abstractmethod
    def evaluate(
        self, recipes: Sequence[Recipe], items: Sequence[dict[str, list[int]]] | None = None
    ) -> list[JobResult]:
        """Score every recipe; results in input order; never raises for a bad candidate.
        ``items`` (racing): per recipe, the item positions to score instead of every item."""

    def evaluate_wants(
        self, recipes: Sequence[Recipe], wants: Sequence[Mapping[str, Any]]
    ) -> list[JobResult]:
        """Compute what each candidate wants besides its fitness (``Candidate.wants``, e.g. a
        gradient): one wants job per recipe, answers in ``JobResult.wanted``, input order."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot compute what candidates want (e.g. gradients)"
        )

    def use_split(self, split: str) -> bool:
        """Score on ``split``'s items (``search`` or ``validation``) from now on, with the
        workers and models already loaded; False when this evaluator cannot (build one on
        that split instead)."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers and resident models."""

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
