"""A gradient as an evaluation result: what a pool-space candidate asks for, and what comes back.

Frank-Wolfe (FW-Merging, Chen et al., ICCV 2025) and AdaMerging (Yang et al., ICLR 2024) step on
the gradient of an objective at the current merge. Their ``ask`` puts a ``GradientRequest`` in
``Candidate.wants["gradient"]``; a worker runs the gradient job on it
(``evomerge.workers.gradient_job``) beside the fitness job, and ``tell`` receives the
``Alignment`` in ``wanted``. Both are small (arrays of pool members x tensor groups), travel
through Ray by pickling with the job result, and are never written to the store: the drivers
keep what they learn from them in their state, which is checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GradientRequest:
    """The gradient of ``objective`` at the genes ``x`` of the run's pool space.

    ``objective`` has ``value(model, step, base_folder) -> loss`` and a ``label``
    (``fitness.proxy_loss.ProxySpec``, ``fitness.entropy_loss.EntropyObjective``); ``step``
    picks its batch. ``stream``: rebuild theta and stream the pool from disk (memory flat in the
    pool size; every alignment number) instead of keeping the task vectors resident (only
    ``tv_dots`` and the gradient's norms).
    """

    index: int
    x: np.ndarray
    objective: Any
    step: int = 0
    stream: bool = True


@dataclass(frozen=True)
class Alignment:
    """One gradient job's result: arrays are (K members, G groups) or (G,)."""

    tv_dots: np.ndarray
    tv_norms: np.ndarray
    w_norms: np.ndarray
    base_dots: np.ndarray
    theta_dots: np.ndarray
    grad_norms: np.ndarray
    loss: float
    peak_bytes: int = 0
    resident_bytes: int = 0
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> Alignment:
        z = np.zeros((0, 0))
        e = np.zeros(0)
        return cls(z, z, z, e, e, e, math.nan, error=error)

    @property
    def ok(self) -> bool:
        if self.error is not None or not math.isfinite(self.loss):
            return False
        arrays = (self.tv_dots, self.tv_norms, self.w_norms, self.base_dots, self.theta_dots)
        return all(np.isfinite(a).all() for a in (*arrays, self.grad_norms))

    def check_shape(self, k: int, g: int) -> None:
        """Raise ValueError when this alignment was computed for another pool layout."""
        want = {
            "tv_dots": (k, g),
            "tv_norms": (k, g),
            "w_norms": (k, g),
            "base_dots": (g,),
            "theta_dots": (g,),
            "grad_norms": (g,),
        }
        for name, shape in want.items():
            got = np.shape(getattr(self, name))
            if got != shape:
                raise ValueError(
                    f"alignment.{name} has shape {got}, expected {shape} "
                    f"({k} pool members x {g} tensor groups)"
                )
