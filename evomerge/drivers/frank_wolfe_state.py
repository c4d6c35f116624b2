"""The frank_wolfe driver's frozen parameters and state (``evomerge.drivers.frank_wolfe``).

FW-Merging (Chen et al., ICCV 2025). The state is small and explicit: the LMO step count, the
coefficient matrix W (groups x pool members), the TIES step history, FW-Soft's collected set and
Adam moments; the ask counter, the pending candidate and the best so far are the base's
``Ledger``, which it extends. Its fields by name are the state dict (``drivers.pool_gradient``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evomerge.drivers import frank_wolfe_lmo as L
from evomerge.drivers.base import Ledger
from evomerge.drivers.options import invalid, option

VARIANTS = ("task_arithmetic", "ties", "soft")


@dataclass(frozen=True)
class FWParams:
    """``driver.options`` of frank_wolfe (``evomerge.drivers.options``)."""

    n_members: int = option(help="pool size (filled in from the space)")
    variant: str = option("task_arithmetic", "fixed by the fw_pool space")
    granularity: str = option("layer", "fixed by the fw_pool space")
    iterations: int = option(10, "Frank-Wolfe iterations (default: the space's)")
    step_size: float = option(1.0, "gamma_t = step_size * 2 / (t + 2)")
    lam: float = option(1.0, "step scale (0.9 with variant ties, the paper's setting)")
    align_on: str = option(
        "task_vector",
        "task_vector: cosine with task vectors; weights: with the weights (reference code)",
    )
    guard: bool = option(True, "hold a group when stepping would not lower the linearised loss")
    soft_steps: int = option(5, "variant soft: Adam steps on the coefficients per iteration")
    soft_lr: float = option(1e-3, "variant soft: Adam learning rate")
    soft_init: float = option(0.3, "variant soft: a new member's initial coefficient")
    max_retries: int = option(2, "failed gradient jobs in a row before the driver stops")
    proxy: dict = option(
        help="FW's objective: {kind: lm or digits, data: labelled JSONL, n: items}", factory=dict
    )

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("variant", self.variant, VARIANTS),
            ("granularity", self.granularity, L.GRANULARITIES),
            ("align_on", self.align_on, L.ALIGN_ON),
        ):
            if value not in valid:
                raise invalid(name, value, f"valid: {', '.join(valid)}")
        for name in ("n_members", "iterations", "soft_steps"):
            if getattr(self, name) < 1:
                raise invalid(name, getattr(self, name), "must be >= 1")
        for name in ("step_size", "lam", "soft_lr"):
            if not getattr(self, name) > 0:
                raise invalid(name, getattr(self, name), "must be > 0")
        from evomerge.fitness.proxy_loss import ProxySpec

        ProxySpec.parse(self.proxy)  # a bad proxy block fails before the search starts


@dataclass(frozen=True)
class FWState(Ledger):
    t: int  # LMO steps taken
    phase: str  # "run" | "done"
    w: np.ndarray  # (G, K) coefficients (TIES: the start W0)
    hist: np.ndarray  # (T, 1 + G) TIES steps: a_t, member per group (-1 holds)
    mask: np.ndarray  # (G, K) members the LMO picked (FW-Soft's collected set)
    m: np.ndarray  # Adam moments (FW-Soft)
    v: np.ndarray
    adam_t: int
    soft_j: int  # successful gradient tells in FW-Soft
    retries: int  # failed gradients in a row
    last_loss: float
    stop_reason: str = ""
