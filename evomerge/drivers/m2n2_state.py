"""The m2n2 driver's frozen options and state (``evomerge.drivers.m2n2``).

M2N2 (Abrantes, Lange & Tang, GECCO 2025). The state is the archive (genomes, per-example score
rows, raw fitness), the RNG position and the initial genomes still to ask, on top of the base's
ledger (``evomerge.drivers.base.Ledger``: the ask counter, pending, best); ``ask`` and ``tell``
return a new one. Its fields are the state dict's keys, the ones checkpoints have always had, so
old ones still load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from evomerge.drivers.base import Ledger
from evomerge.drivers.options import invalid, option

INITS = ("uniform", "normal", "given")


@dataclass(frozen=True)
class M2N2Params:
    """``driver.options`` of m2n2 (``evomerge.drivers.options``)."""

    init_points: list[list[float]] = option(
        help="extra genomes that enter the initial archive after x0 (e.g. the experts)",
        factory=list,
    )
    archive_size: int = option(20, "P: genomes kept in the archive")
    alpha: float = option(
        1.0, "resource-sharing exponent: 1 is M2N2, 0 a plain GA (the paper's ablation)"
    )
    use_attraction: bool = option(
        True, "pick the second parent by what it solves that the first does not"
    )
    use_splitpoint: bool = option(
        True, "crossover with a random split point (false: one mixing ratio for all genes)"
    )
    mutation_std: float = option(
        0.0, "Gaussian mutation per gene (0 when merging experts; 0.01 from scratch)"
    )
    init: str = option(
        "uniform",
        "initial archive: uniform in the box, normal (N(0, init_std^2)) or given (x0 + init_points)",
    )
    init_std: float = option(0.01, "init normal: the standard deviation")
    batch_size: int = option(1, "children asked per generation")

    def __post_init__(self) -> None:
        if self.archive_size < 2:
            raise invalid("archive_size", self.archive_size, "must be >= 2")
        if self.init not in INITS:
            raise invalid("init", self.init, f"valid: {', '.join(INITS)}")
        if self.init == "given" and len(self.init_points) == 0:
            raise invalid("init", self.init, "needs init_points (e.g. the experts' genomes)")
        if self.batch_size < 1:
            raise invalid("batch_size", self.batch_size, "ask at least 1 child per generation")
        for name in ("mutation_std", "init_std"):
            if getattr(self, name) < 0:
                raise invalid(name, getattr(self, name), "a standard deviation must be >= 0")


@dataclass(frozen=True)
class M2N2State(Ledger):
    rng: dict  # the PCG64 bit generator's state (``Generator.bit_generator.state``)
    genomes: np.ndarray  # (P', D) archive genomes, P' <= archive_size
    scores: np.ndarray | None  # (P', N) per-example rows; None before the first admission
    fitness: np.ndarray  # (P',) raw fitness of the archive members
    init: list[np.ndarray]  # x0, then the init_points (the first asks)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: copies, so later steps cannot change a written state."""
        return {
            "rng": self.rng,
            "genomes": self.genomes.copy(),
            "scores": None if self.scores is None else self.scores.copy(),
            "fitness": self.fitness.copy(),
            **super().state_dict(),  # next, pending, best
            "init": list(self.init),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> M2N2State:
        return cls(
            rng=state["rng"],
            genomes=state["genomes"].copy(),
            scores=None if state["scores"] is None else state["scores"].copy(),
            fitness=state["fitness"].copy(),
            init=list(state["init"]),
            **Ledger.saved(state),
        )
