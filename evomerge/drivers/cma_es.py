"""CMA-ES through pycma — Hansen & Ostermeier 2001, "Completely Derandomized Self-Adaptation
in Evolution Strategies"; the parameter-space optimizer of Akiba et al. 2024 ("Evolutionary
Optimization of Model Merging Recipes": x0 = 0.5, σ0 = 1/6, popsize 4 + ⌊3 ln n⌋, bounds
[0, 1]).

pycma minimizes, so it is told −fitness. A failed candidate (NaN) is told a finite penalty
worse than every loss seen so far (max seen loss + 1, or 1e6 before any success): pycma cannot
take NaN, and ranking it last is what "failed" means to a rank-based method. pycma samples from
a ``RandomState`` given through its ``randn`` option (pickled with the strategy), and any use
of numpy's global RNG inside pycma happens under a private global state swapped in around each
call, so other code using ``np.random`` cannot change the search and a resume is exact.

The driver's own bookkeeping (that RNG state, the generation asked and the genotypes pycma
proposed, the worst loss seen, and the base's ledger) is a frozen ``CMAState``, replaced by
``ask`` and ``tell``; the pycma strategy is the one live object (docs/architecture.md says why).

``sigma_adaptation`` picks the step-size rule: "csa", "tpa", or None for pycma's own choice
(pycma 4.5: TPA from 300 dimensions up whatever the covariance; pycma 4.0: TPA only for a
diagonal covariance of 300+ dimensions, CSA otherwise). ``adapt_covariance=False`` freezes C at
I (pycma's CMA_on = 0): a full covariance over n genes learns at rates ~1/n², so with n in the
tens of thousands C stays ≈ I for a whole run and this isotropic ES is what full CMA-ES does
there, at O(n) instead of O(n²) cost per sample.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers.base import Candidate, Driver, Ledger, register_driver
from evomerge.drivers.options import invalid, option
from evomerge.errors import UserInputError
from evomerge.results import EvalResult


@dataclass(frozen=True)
class CMAESOptions:
    """``driver.options`` of cma_es (``evomerge.drivers.options``)."""

    sigma0: float = option(1 / 6, "initial step size in gene units (Sakana: 1/6 of the [0, 1] box)")
    popsize: int | None = option(None, "candidates per generation (null: 4 + floor(3 ln dim))")
    diagonal: bool = option(False, "learn a diagonal covariance only (sep-CMA: O(dim) per sample)")
    max_evals: int | None = option(
        None, "pycma's own evaluation cap (null: the experiment's budget decides)"
    )
    tolfun: float = option(
        0.0, "stop when recent generations' fitness range falls below this (0: never)"
    )
    tolflatfitness: int = option(10**9, "stop after this many generations of equal fitness values")
    sigma_adaptation: str | None = option(
        None, "step-size rule: csa, tpa, or null for pycma's choice"
    )
    adapt_covariance: bool = option(
        True, "false: hold the covariance at I (an isotropic ES, O(dim) per sample)"
    )

    def __post_init__(self) -> None:
        if not self.sigma0 > 0:
            raise invalid("sigma0", self.sigma0, "must be > 0 (Sakana's is 1/6)")
        if self.popsize is not None and self.popsize < 2:
            raise invalid("popsize", self.popsize, "must be >= 2, or null for 4 + floor(3 ln dim)")
        if self.sigma_adaptation not in (None, "csa", "tpa"):
            raise invalid("sigma_adaptation", self.sigma_adaptation, "valid: csa, tpa or null")


@dataclass(frozen=True)
class CMAState(Ledger):
    """Everything but the strategy; the state dict's keys are its fields (lists for tuples)."""

    rng: tuple  # numpy's global RandomState as pycma left it (``np.random.get_state()``)
    generation: tuple[Candidate, ...] = ()  # the candidates of the generation asked, in order
    asked: tuple[np.ndarray, ...] = ()  # the genotypes pycma proposed (before clipping)
    worst_loss: float | None = None  # the largest loss told: a failure is told this + 1


@register_driver
class CMAES(Driver):
    name = "cma_es"
    options_cls: ClassVar[type] = CMAESOptions

    def __init__(
        self,
        dim: int,
        lower: np.ndarray,
        upper: np.ndarray,
        x0: np.ndarray,
        *,
        seed: int,
        **options: Any,
    ) -> None:
        super().__init__(dim, lower, upper, x0, seed=seed, **options)
        import cma

        o = self.options
        self.popsize = int(o.popsize or 4 + math.floor(3 * math.log(max(dim, 1))))
        self.batch_size = self.popsize  # one generation per ask
        rules = {None: True, "csa": cma.sigma_adaptation.CMAAdaptSigmaCSA}
        rules["tpa"] = cma.sigma_adaptation.CMAAdaptSigmaTPA
        opts = {
            "seed": seed + 1,  # pycma treats seed 0 as "random"
            "popsize": self.popsize,
            "bounds": [list(self.lower), list(self.upper)],
            "CMA_diagonal": bool(o.diagonal),
            "AdaptSigma": rules[o.sigma_adaptation],
            "CMA_on": 1 if o.adapt_covariance else 0,
            "verbose": -9,
            "tolfun": o.tolfun,
            # pycma stops when a generation's fitness values are all equal (tolfun, tolfunhist,
            # and tolflatfitness after one flat generation); exact-match scores are flat around
            # many starts (every candidate 0), and there widening sigma, which pycma does while
            # it continues, is the way out. Off by default: the budget decides, and tolx still
            # stops a search whose sigma has collapsed.
            "tolflatfitness": o.tolflatfitness,
            "tolfunhist": o.tolfun,  # the same test over the last generations' best values
            # pycma's sampler: a RandomState of our own, pickled with the strategy, so a
            # resumed search draws exactly what the uninterrupted one would have drawn
            "randn": np.random.RandomState(seed).randn,
        }
        if o.max_evals:
            opts["maxfevals"] = int(o.max_evals)
        self.state = CMAState(rng=np.random.RandomState(seed).get_state())
        self._es = self._with_rng(lambda: cma.CMAEvolutionStrategy(list(self.x0), o.sigma0, opts))

    def _with_rng(self, fn: Any) -> Any:
        outside = np.random.get_state()
        np.random.set_state(self.state.rng)
        try:
            return fn()
        finally:
            self.state = replace(self.state, rng=np.random.get_state())
            np.random.set_state(outside)

    def racing_need(self) -> int:
        """The recombination parents (mu): pycma's update weighs them by rank. Active CMA's
        negative weights also rank the rest; racing tells those their estimates (docs/racing.md)."""
        return int(self._es.sp.weights.mu)

    def ask(self, n: int | None = None) -> list[Candidate]:
        if self.state.pending:
            raise UserInputError("cma_es.ask: tell the previous generation first")
        xs = self._with_rng(self._es.ask)
        asked = tuple(np.asarray(x, dtype=float) for x in xs)
        out = [self._issue(np.clip(x, self.lower, self.upper)) for x in asked]
        self.state = replace(self.state, generation=tuple(out), asked=asked)
        return out

    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[float],
        details: Sequence[EvalResult | None] | None = None,
    ) -> None:
        values = self._check_tell(candidates, fitness)
        if [c.index for c in candidates] != [c.index for c in self.state.generation]:
            raise UserInputError("cma_es.tell: tell the whole generation, in ask order")
        worst = self.state.worst_loss
        losses = [-f for f in values if not math.isnan(f)]
        if losses:
            worst = max(losses) if worst is None else max(worst, *losses)
        penalty = 1e6 if worst is None else worst + 1.0
        told = [penalty if math.isnan(f) else -f for f in values]
        # pycma is told the genotype it asked for: the clipped copy is only what we evaluate
        asked = list(self.state.asked)
        self._with_rng(lambda: self._es.tell(asked, told))
        self.state = replace(self.state, worst_loss=worst)
        self._settle(candidates, values)

    def stop(self) -> bool:
        return bool(self._es.stop())

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "es": pickle.dumps(self._es),
            "rng": s.rng,
            **s.state_dict(),  # next, pending, best
            "generation": list(s.generation),
            "asked": list(s.asked),
            "worst_loss": s.worst_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._es = pickle.loads(state["es"])
        self.state = CMAState(
            rng=state["rng"],
            generation=tuple(state["generation"]),
            asked=tuple(state["asked"]),
            worst_loss=state["worst_loss"],
            **Ledger.saved(state),
        )
