"""Optuna as a driver: TPE (Bergstra et al. 2011, "Algorithms for Hyper-Parameter
Optimization") for one objective, NSGA-II (Deb et al. 2002) when the fitness has several.

Each gene is a ``FloatDistribution`` over its bounds; candidates are Optuna trials from
``study.ask``; a failed candidate is told as ``TrialState.FAIL`` (Optuna's own convention for
failures, which its samplers know to ignore). With ``objectives: k > 1`` each fitness value told
is a sequence of k floats (NaN anywhere = failed). The study lives in Optuna's in-memory
storage; ``state_dict`` pickles it whole (trials and the sampler's RNG), so the next ``ask``
after a resume is the one the uninterrupted run would have made.

``fitness.constraints`` reach Optuna natively: before ``tell`` the loop hands each trial's
constraint values (<= 0 holds) to ``tell_constraints``; they are set with
``Trial.set_constraint``, which Optuna 5's TPE and NSGA-II samplers read (the deprecated
``constraints_func`` is not used). The values live in the pickled study, so resume keeps them.

The driver's own bookkeeping (the base's ledger, and constraint values handed over and not yet
told) is a frozen ``OptunaState``, replaced by ``ask``, ``tell_constraints`` and ``tell``; the
study is the one live object (docs/architecture.md says why).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers.base import Candidate, Driver, Ledger, register_driver
from evomerge.drivers.options import invalid, option
from evomerge.errors import UserInputError
from evomerge.results import EvalResult


@dataclass(frozen=True)
class OptunaOptions:
    """``driver.options`` of optuna (``evomerge.drivers.options``)."""

    sampler: str | None = option(
        None, "tpe or nsga2 (null: tpe for one objective, nsga2 for several)"
    )
    objectives: int = option(1, "number of objectives (the fitness's objective names)")
    batch_size: int = option(8, "trials asked per generation")
    n_startup_trials: int = option(10, "TPE: random trials before the model-based ones")
    enqueue_x0: bool = option(True, "evaluate the space's starting point first")

    def __post_init__(self) -> None:
        if self.sampler not in (None, "tpe", "nsga2"):
            raise invalid("sampler", self.sampler, "valid: tpe, nsga2 or null")
        for name in ("objectives", "batch_size"):
            if getattr(self, name) < 1:
                raise invalid(name, getattr(self, name), "must be >= 1")
        if self.n_startup_trials < 0:
            raise invalid("n_startup_trials", self.n_startup_trials, "must be >= 0")


@dataclass(frozen=True)
class OptunaState(Ledger):
    """The ledger (pending keeps each candidate's trial number) and, until their ``tell``, the
    constraint values handed over per trial number. The state dict holds the ledger's fields
    only: the constraints live between ``tell_constraints`` and ``tell``, never across a commit.
    """

    constraints: dict[int, tuple[float, ...]] = field(default_factory=dict)


@register_driver
class OptunaDriver(Driver):
    name = "optuna"
    options_cls: ClassVar[type] = OptunaOptions
    can_ask_ahead = True
    native_constraints = True  # told raw values; constraints set on the trials

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
        import optuna

        o = self.options
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.objectives = int(o.objectives)
        self.batch_size = int(o.batch_size)
        kind = o.sampler or ("nsga2" if self.objectives > 1 else "tpe")
        if kind == "tpe":
            smp = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=o.n_startup_trials, multivariate=True
            )
        else:
            smp = optuna.samplers.NSGAIISampler(seed=seed, population_size=max(self.batch_size, 4))
        self._study = optuna.create_study(directions=["maximize"] * self.objectives, sampler=smp)
        self._dists = {
            f"x{i}": optuna.distributions.FloatDistribution(float(lo), float(hi))
            for i, (lo, hi) in enumerate(zip(self.lower, self.upper))
        }
        if o.enqueue_x0:
            self._study.enqueue_trial({f"x{i}": float(v) for i, v in enumerate(self.x0)})
        self.state = OptunaState()

    def tell_constraints(
        self, candidates: Sequence[Candidate], values: Sequence[list[float] | None]
    ) -> None:
        """Each candidate's constraint values (None: a failure), set by the coming ``tell``."""
        held = dict(self.state.constraints)
        for c, v in zip(candidates, values, strict=True):
            if v is not None and c.index in self.state.pending:  # pending keeps trial numbers
                held[self.state.pending[c.index]] = tuple(float(x) for x in v)
        self.state = replace(self.state, constraints=held)

    def _set_constraints(self, number: int, values: Sequence[float]) -> None:
        import optuna

        # the trial's storage id from its number (the driver keeps numbers, as its state did)
        study = self._study
        tid = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        trial = optuna.trial.Trial(study, tid)
        for i, v in enumerate(values):
            trial.set_constraint(str(i), v)

    def racing_need(self) -> int | None:
        # single objective: only the best matters (TPE is told the others' estimates)
        return 1 if self.objectives == 1 else None

    def ask(self, n: int | None = None) -> list[Candidate]:
        out = []
        for _ in range(n or self.batch_size):
            trial = self._study.ask(self._dists)
            x = np.array([trial.params[f"x{i}"] for i in range(self.dim)], dtype=float)
            # pending keeps the trial number (the tell's handle into the study)
            out.append(self._issue(x, {"trial": trial.number}, keep=trial.number))
        return out

    def _values(self, c: Candidate, f: Any) -> list[float] | None:
        """The objective vector of one told fitness, or None for a failure."""
        if f is None:
            raise UserInputError(f"optuna.tell: fitness of candidate {c.index} is None; tell NaN")
        vals = [float(v) for v in (f if isinstance(f, (list, tuple, np.ndarray)) else [f])]
        if len(vals) != self.objectives:
            raise UserInputError(
                f"optuna.tell: candidate {c.index} has {len(vals)} objective values, "
                f"the driver was configured with objectives: {self.objectives}"
            )
        return None if any(math.isnan(v) for v in vals) else vals

    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[Any],
        details: Sequence[EvalResult | None] | None = None,
    ) -> None:
        import optuna

        self._check_asked(candidates, fitness)  # fitness may be a vector: checked below
        checked = [self._values(c, f) for c, f in zip(candidates, fitness)]
        for c, vals in zip(candidates, checked):
            number = self._told(c)
            held = dict(self.state.constraints)
            cons = held.pop(number, None)
            self.state = replace(self.state, constraints=held)
            if vals is None:
                self._study.tell(number, state=optuna.trial.TrialState.FAIL)
                continue
            if cons is not None:
                self._set_constraints(number, cons)
            self._study.tell(number, vals if self.objectives > 1 else vals[0])
            if cons is not None and max(cons) > 0:
                continue  # infeasible: never the driver's best
            score = vals[0] if self.objectives == 1 else float(np.mean(vals))
            self._note_best(c, score)

    def stop(self) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "study": _dump_study(self._study),
            **self.state.state_dict(),  # next, pending (index -> trial number), best
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._study = _load_study(state["study"])
        self.state = OptunaState(**Ledger.saved(state))


def _dump_study(study: Any) -> bytes:
    """The study pickled. Optuna 5's NSGA-II sampler holds a ``threading.Lock``, which pickle
    refuses: it is left out and a fresh one made on load (it guards nothing across processes)."""
    sampler = study.sampler
    lock = getattr(sampler, "_thread_lock", None)
    if lock is not None:
        sampler._thread_lock = None
    try:
        return pickle.dumps(study)
    finally:
        if lock is not None:
            sampler._thread_lock = lock


def _load_study(blob: bytes) -> Any:
    import threading

    study = pickle.loads(blob)
    if getattr(study.sampler, "_thread_lock", False) is None:
        study.sampler._thread_lock = threading.Lock()
    return study
