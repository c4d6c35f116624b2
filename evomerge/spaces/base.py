"""The search-space contract: a box of real genes and a deterministic decoder to a Recipe.

``decode`` must not touch the disk or any RNG: the same x always gives the same recipe (and so
the same digest), which is what lets the store skip candidates that were already scored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from evomerge.recipe import Recipe


class SearchSpace(ABC):
    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    @abstractmethod
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each of shape (dim,)."""

    @abstractmethod
    def x0(self) -> np.ndarray:
        """The starting point (e.g. 0.5 everywhere for Sakana's PS, model A's path for DFS)."""

    @abstractmethod
    def decode(self, x: np.ndarray) -> Recipe: ...

    @abstractmethod
    def gene_names(self) -> list[str]:
        """One readable name per gene (e.g. 'expert_add/layers.0-1/density'), for reports."""
