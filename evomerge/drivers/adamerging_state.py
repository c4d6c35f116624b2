"""The adamerging driver's frozen parameters and explicit state (``evomerge.drivers.adamerging``).

AdaMerging (Yang et al., ICLR 2024). The state is small: the raw coefficients lambda (tensor
groups x experts), Adam's moments and step count, the entropy after each step; the ask counter,
the pending candidate and the best told so far are the base's ``Ledger``, which it extends. Its
fields by name are the state dict (``drivers.pool_gradient``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evomerge.drivers.base import Ledger
from evomerge.drivers.options import invalid, option


@dataclass(frozen=True)
class AdaParams:
    """``driver.options`` of adamerging (``evomerge.drivers.options``)."""

    n_members: int = option(help="number of experts, K task vectors (filled in from the space)")
    steps: int = option(500, "Adam updates of the coefficients (the paper's 500)")
    lr: float = option(1e-3, "Adam learning rate (the paper's 1e-3)")
    init: float = option(0.3, "initial coefficient of every expert and group (the paper's 0.3)")
    max_retries: int = option(2, "failed gradient jobs in a row before the driver stops")
    stream: bool = option(
        False, "stream the experts from disk each step (memory flat in their number)"
    )
    objective: dict = option(
        help="unlabelled inputs whose entropy is minimised, e.g. {kind: lm, tasks: [...]}",
        factory=dict,
    )

    def __post_init__(self) -> None:
        for name in ("n_members", "steps"):
            if getattr(self, name) < 1:
                raise invalid(name, getattr(self, name), "must be an integer >= 1")
        if not self.lr > 0:
            raise invalid("lr", self.lr, "must be > 0 (the paper's is 1e-3)")
        if not 0.0 <= self.init <= 1.0:
            raise invalid(
                "init",
                self.init,
                "must be in [0, 1] (coefficients are clipped to [0, 1]; the paper starts at 0.3)",
            )
        if self.max_retries < 0:
            raise invalid("max_retries", self.max_retries, "must be >= 0")
        from evomerge.fitness.entropy_loss import EntropyObjective

        EntropyObjective.parse(self.objective)  # a bad objective fails before the search


@dataclass(frozen=True)
class AdaState(Ledger):
    t: int  # Adam updates taken
    phase: str  # "run" | "done"
    lam: np.ndarray  # (G, K) raw coefficients; the merge uses clip(lam, 0, 1)
    m: np.ndarray  # Adam moments
    v: np.ndarray
    losses: np.ndarray  # (t,) entropy at the coefficients each update started from
    retries: int  # failed gradients in a row
    stop_reason: str = ""
