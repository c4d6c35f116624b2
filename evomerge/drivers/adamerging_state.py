"""The adamerging driver's frozen parameters and explicit state (``evomerge.drivers.adamerging``).

AdaMerging (Yang et al., ICLR 2024). The state is small: the raw coefficients lambda (tensor
groups x experts), Adam's moments and step count, the entropy after each step, the pending
candidate and the best told fitness; ``asdict`` of it is the state dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evomerge.errors import UserInputError


@dataclass(frozen=True)
class AdaParams:
    n_members: int  # K experts (task vectors)
    steps: int = 500  # Adam updates (the paper's 500 iterations)
    lr: float = 1e-3  # the paper's Adam learning rate
    init: float = 0.3  # the paper's initial lambda (every task and group)
    max_retries: int = 2  # failed gradient jobs in a row before the driver stops
    stream: bool = False  # True: stream experts from disk each step (memory flat in K)
    objective: dict = field(default_factory=dict)  # unlabelled inputs (EntropyObjective)

    def __post_init__(self) -> None:
        for name in ("n_members", "steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserInputError(f"adamerging: driver.options.{name} must be an integer >= 1")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise UserInputError(f"adamerging: driver.options.lr {self.lr!r} must be > 0")
        if not (isinstance(self.init, (int, float)) and 0.0 <= self.init <= 1.0):
            raise UserInputError(
                f"adamerging: driver.options.init {self.init!r} must be in [0, 1] "
                "(coefficients are clipped to [0, 1]; the paper starts at 0.3)"
            )
        if int(self.max_retries) < 0:
            raise UserInputError("adamerging: driver.options.max_retries must be >= 0")
        from evomerge.fitness.entropy_loss import EntropyObjective

        EntropyObjective.parse(self.objective)  # a bad objective fails before the search


@dataclass(frozen=True)
class AdaState:
    t: int  # Adam updates taken
    phase: str  # "run" | "done"
    lam: np.ndarray  # (G, K) raw coefficients; the merge uses clip(lam, 0, 1)
    m: np.ndarray  # Adam moments
    v: np.ndarray
    losses: np.ndarray  # (t,) entropy at the coefficients each update started from
    next_index: int
    pending: int  # index of the asked, untold candidate, -1 if none
    retries: int
    best_index: int
    best_f: float
    best_x: np.ndarray
    stop_reason: str = ""
