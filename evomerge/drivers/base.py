"""The driver contract: ask/tell is the only link between search and evaluation.

Every driver maximizes. A failed candidate is told as NaN (never None) and the driver must
treat it as the worst possible value. ``state_dict()``/``load_state_dict()`` must round-trip
exactly: after a load, the next ``ask`` returns what the original would have returned (this is
what makes ``evomerge resume`` exact). The store pickles the state dict into SQLite, so it may
hold numpy arrays and bytes.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers._common import check_asked, check_tell
from evomerge.drivers.options import parse_options
from evomerge.results import EvalResult


@dataclass(frozen=True)
class Candidate:
    """One proposal. ``index`` is the driver's ask counter (0, 1, 2, ...) and never repeats.

    ``wants``: what the candidate asks the workers for besides its fitness (key -> request, e.g.
    ``{"gradient": GradientRequest}``; ``evomerge.workers.wants``); ``tell`` then receives the
    answers as ``wanted``. Not stored (``meta`` is).
    """

    index: int
    x: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    wants: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NoOptions:
    """The options of a driver that takes none: any ``driver.options`` key is refused."""


@dataclass(frozen=True, kw_only=True)
class Ledger:
    """What every driver that asks candidates by number keeps: the ask counter, the candidates
    asked and not yet told, and the best told so far. A driver's frozen state extends it (its
    own fields are then the rest of the state dict); its fields are the state-dict keys these
    drivers' checkpoints have always had (``next``, ``pending``, ``best``)."""

    next: int = 0
    #: index -> what the driver keeps until the tell (the Candidate unless it keeps another
    #: handle, e.g. Optuna's trial number)
    pending: dict[int, Any] = field(default_factory=dict)
    best: tuple[Candidate, float] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"next": self.next, "pending": dict(self.pending), "best": self.best}

    @staticmethod
    def saved(state: dict[str, Any]) -> dict[str, Any]:
        """The ledger's fields read from a state dict (a subclass adds its own to build itself)."""
        return {"next": state["next"], "pending": dict(state["pending"]), "best": state["best"]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Ledger:
        return cls(**cls.saved(state))


class Driver(ABC):
    """Base class of all search drivers. Subclasses register with ``@register_driver``.

    The base keeps the :class:`Ledger` in ``self.state`` (a driver with a frozen state of its
    own makes that state a subclass of ``Ledger``): a driver numbers its candidates with
    ``_issue``, checks a tell with ``_check_tell`` (or ``_check_asked`` for non-scalar fitness),
    and records it with ``_settle`` (or ``_told`` + ``_note_best`` one candidate at a time);
    ``best`` then needs no code of its own. Every registered driver keeps its ledger here (the
    pool gradient drivers too: one candidate at a time, asked again until told).
    """

    name: ClassVar[str] = ""
    #: True when ``ask`` may be called again before the previous candidates are told
    #: (random, Optuna, steady-state M2N2): the Ray evaluator then keeps every worker busy.
    can_ask_ahead: ClassVar[bool] = False
    #: How many candidates ``ask()`` (no ``n``) returns; a driver that asks ahead is asked for
    #: at most this many, fewer when the evaluation budget has less left. None: any number
    #: (the loop then asks for what the budget has left).
    batch_size: int | None = None
    #: The frozen dataclass ``driver.options`` are parsed into (``evomerge.drivers.options``):
    #: its fields, made with ``option(default, help)``, are also the docs (``evomerge schema``).
    #: The default is for a driver that takes no options.
    options_cls: ClassVar[type] = NoOptions

    def racing_need(self) -> int | None:
        """Racing (``fitness.racing``): how many of a generation's best this driver needs
        ranked on every item; the others may be told an estimate from fewer items. None: it
        needs every candidate's every item (``racing_refusal`` says why)."""
        return None

    @classmethod
    def racing_refusal(cls) -> str:
        if getattr(cls, "needs_gradient", False):
            return "follows gradients, not a ranking of scored candidates"
        return "needs every candidate scored on every item"

    @classmethod
    def misfit(cls, space: Any) -> str | None:
        """Why this driver cannot search a space of this config (a ``SpaceConfig``), or None.

        Checked before a run folder is written, so a pairing that cannot work is one line
        instead of a traceback from deep in the first ``ask``. A black-box driver searches any
        box of genes except the TIES pool space, whose genes are Frank-Wolfe's own step history
        (each candidate chains recipes that only that driver's loop can resolve).
        """
        if space.kind == "fw_pool" and space.variant == "ties":
            return "the TIES pool space's genes are Frank-Wolfe's step history"
        return None

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
        #: ``driver.options`` parsed: an instance of ``options_cls``
        self.options = parse_options(self.name, self.options_cls, options)
        self.dim = dim
        self.lower = np.asarray(lower, dtype=float)
        self.upper = np.asarray(upper, dtype=float)
        self.x0 = np.asarray(x0, dtype=float)
        self.seed = seed
        self.state: Any = Ledger()

    # ---- the ledger: ask counter, pending, best --------------------------------------------
    def _issue(
        self,
        x: np.ndarray,
        meta: dict[str, Any] | None = None,
        wants: dict[str, Any] | None = None,
        *,
        keep: Any = None,
    ) -> Candidate:
        """The next candidate, numbered by the ask counter and pending until told. ``keep``:
        what the driver needs back at the tell (default: the candidate itself)."""
        led = self.state
        c = Candidate(led.next, x, {} if meta is None else meta, {} if wants is None else wants)
        held = c if keep is None else keep
        self.state = replace(led, next=led.next + 1, pending={**led.pending, c.index: held})
        return c

    def _check_asked(self, candidates: Sequence[Candidate], fitness: Sequence[Any]) -> None:
        """One fitness per candidate, and every candidate asked and not yet told."""
        check_asked(self.name, candidates, fitness, self.state.pending)

    def _check_tell(self, candidates: Sequence[Candidate], fitness: Sequence[float]) -> list[float]:
        """``_check_asked`` and every fitness a number (NaN: failed); the floats. Changes nothing."""
        return check_tell(self.name, candidates, fitness, self.state.pending)

    def _told(self, c: Candidate) -> Any:
        """Take ``c`` off the pending candidates; what ``_issue`` kept for it."""
        led = self.state
        pending = dict(led.pending)
        held = pending.pop(c.index)
        self.state = replace(led, pending=pending)
        return held

    def _note_best(self, c: Candidate, f: float) -> None:
        """``best`` becomes (c, f) if f beats it (a failure, NaN, never does; ties keep the first)."""
        best = self.state.best
        if not math.isnan(f) and (best is None or f > best[1]):
            self.state = replace(self.state, best=(c, f))

    def _settle(self, candidates: Sequence[Candidate], values: Sequence[float]) -> None:
        """Record checked tells: each candidate leaves pending, the best is updated."""
        for c, f in zip(candidates, values):
            self._told(c)
            self._note_best(c, f)

    @property
    def best(self) -> tuple[Candidate, float] | None:
        """Best told candidate and its fitness so far (None before any success)."""
        return self.state.best

    @classmethod
    def for_space(cls, space: Any, *, seed: int = 0, **options: Any) -> Driver:
        """The driver for a built search space (what ``session`` calls). A driver whose options
        follow from the space's layout (a pool's size) overrides it to fill them in."""
        lo, hi = space.bounds
        return cls(space.dim, lo, hi, space.x0(), seed=seed, **options)

    @abstractmethod
    def ask(self, n: int | None = None) -> list[Candidate]:
        """Propose candidates (``n`` None = the driver's natural batch, e.g. a generation)."""

    @abstractmethod
    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[float],
        details: Sequence[EvalResult | None] | None = None,
    ) -> None:
        """Report fitness (maximize; NaN = failed) in ask order; ``details`` carries
        per-example scores for drivers that need them (M2N2). A driver whose candidates have
        ``wants`` also takes ``wanted``: per candidate, key -> answer."""

    @abstractmethod
    def stop(self) -> bool:
        """True when the driver's own termination criterion holds."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


DRIVERS: dict[str, type[Driver]] = {}


def register_driver(cls: type[Driver]) -> type[Driver]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute 'name'")
    opts = getattr(cls, "options_cls", None)
    if not (dataclasses.is_dataclass(opts) and opts.__dataclass_params__.frozen):
        raise TypeError(f"{cls.__name__} needs options_cls, a frozen dataclass of its options")
    DRIVERS[cls.name] = cls
    return cls
