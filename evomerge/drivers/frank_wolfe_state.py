"""The frank_wolfe driver's frozen parameters and state (``evomerge.drivers.frank_wolfe``).

FW-Merging (Chen et al., ICCV 2025). The state is small and explicit: the LMO step count, the
coefficient matrix W (groups x pool members), the TIES step history, FW-Soft's collected set and
Adam moments, the pending candidate and the best so far; ``asdict`` of it is the state dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evomerge.drivers import frank_wolfe_lmo as L
from evomerge.errors import UserInputError

VARIANTS = ("task_arithmetic", "ties", "soft")


@dataclass(frozen=True)
class FWParams:
    n_members: int
    variant: str = "task_arithmetic"
    granularity: str = "layer"
    iterations: int = 10
    step_size: float = 1.0
    lam: float = 1.0
    align_on: str = "task_vector"
    guard: bool = True
    soft_steps: int = 5
    soft_lr: float = 1e-3
    soft_init: float = 0.3
    max_retries: int = 2
    proxy: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("variant", self.variant, VARIANTS),
            ("granularity", self.granularity, L.GRANULARITIES),
            ("align_on", self.align_on, L.ALIGN_ON),
        ):
            if value not in valid:
                raise UserInputError(
                    f"driver.options.{name} {value!r} is unknown; valid: {', '.join(valid)}"
                )
        for name in ("n_members", "iterations", "soft_steps"):
            if int(getattr(self, name)) < 1:
                raise UserInputError(f"driver.options.{name} must be >= 1")
        from evomerge.fitness.proxy_loss import ProxySpec

        ProxySpec.parse(self.proxy)  # a bad proxy block fails before the search starts
        if not (self.step_size > 0 and self.lam > 0 and self.soft_lr > 0):
            raise UserInputError("driver.options: step_size, lam and soft_lr must be > 0")


@dataclass(frozen=True)
class FWState:
    t: int  # LMO steps taken
    phase: str  # "run" | "done"
    w: np.ndarray  # (G, K) coefficients (TIES: the start W0)
    hist: np.ndarray  # (T, 1 + G) TIES steps: a_t, member per group (-1 holds)
    mask: np.ndarray  # (G, K) members the LMO picked (FW-Soft's collected set)
    m: np.ndarray  # Adam moments (FW-Soft)
    v: np.ndarray
    adam_t: int
    soft_j: int  # successful gradient tells in FW-Soft
    next_index: int
    pending: int  # index of the asked, untold candidate, -1 if none
    retries: int
    best_index: int
    best_f: float
    best_x: np.ndarray
    last_loss: float
    stop_reason: str = ""
