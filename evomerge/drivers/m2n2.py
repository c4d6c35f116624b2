"""M2N2 — Abrantes, Lange & Tang, "Competition and Attraction Improve Model Fusion" (GECCO 2025;
reference code SakanaAI/natural_niches, which this file follows where the paper is terse).

An archive of P genomes, each with a row of per-example scores S (P × N). Steady state, one
child per ask by default:

- **Resource competition** (shared fitness): z_j = Σ_k S_kj (0 → 1), f_kj = S_kj / z_j^α,
  F_k = Σ_j f_kj. α = 1 is M2N2; α = 0 is a plain GA (the paper's ablation).
- **Attraction**: parent 1 ∝ F; g_k = Σ_j max(0, f_kj − f_{p1,j}) (what k solves that p1 does
  not); parent 2 ∝ g (∝ F when Σg = 0 — the reference code divides by zero there).
- **Crossover with a moving boundary**: split s ~ U{0..D−1}, mixing ratio w ~ U(0, 1); SLERP
  with t_i = w for i < s and 1 − w for i ≥ s, one angle Ω from the whole normalised vectors,
  lerp when sin Ω ≤ 1e-6. The split is over the genome's gene order (for recipe genomes the
  spaces order genes model-major, then layer group, so a split is a layer boundary).
- **Mutation** N(0, σ²) per gene (σ = 0.01 when evolving from scratch; 0 when merging experts).
- **Archive update**: the child is evaluated on every example; shared fitness is recomputed
  over the P + 1 rows and the lowest is dropped (the child itself if it is the lowest).

The first P asks are the initial population (x0, then ``init_points``, then random points:
uniform in the box, or N(0, init_std²) from scratch; with ``init: given`` only x0 and the
init_points, e.g. the experts); they enter the archive through the same update. Per-example
rows come from ``details`` (an EvalResult: the tasks' per-example values concatenated in
task-name order). Scores are shifted per column to be ≥ 0 (resources cannot be negative).

Scalar fallback (ours; the paper always has per-example scores): a task that reports no
per-example values (a python fitness returning one float) counts as one resource, its score;
without details the row is the fitness. With a single resource, shared fitness ranks by score
(f_k = S_k / Σ S), attraction pairs p1 with the members that beat it, and the archive drops the
lowest: M2N2 becomes an elitist, fitness-proportional GA with its crossover. It still improves,
but it has no niches to keep diverse, so it warns once and says what to return instead.
(Before this fallback such a task gave an empty row, every member tied, and each child
overwrote slot 0 whatever its score.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers._common import check_tell
from evomerge.drivers.base import Candidate, Driver, register_driver
from evomerge.errors import UserInputError
from evomerge.results import EvalResult

log = logging.getLogger(__name__)
SCALAR_WARNING = (
    "m2n2: task {task!r} gives one score per candidate, no per-example scores, so resource "
    "competition and attraction have no niches and M2N2 runs as a plain elitist GA; return "
    "evomerge.fitness.TaskScore.from_examples([one value per item]) from the fitness function "
    "for M2N2 proper, or use driver cma_es"
)


@dataclass(frozen=True)
class M2N2Params:
    archive_size: int = 20
    alpha: float = 1.0
    use_attraction: bool = True
    use_splitpoint: bool = True
    mutation_std: float = 0.0
    init: str = (
        "uniform"  # "normal" (from scratch: N(0, init_std^2)), "given" (x0 + init_points only)
    )
    init_std: float = 0.01
    batch_size: int = 1


def shared_fitness(scores: np.ndarray, alpha: float) -> np.ndarray:
    """f_kj = S_kj / z_j^alpha with z_j = Σ_k S_kj (0 → 1), after shifting columns to ≥ 0."""
    s = scores - np.minimum(scores.min(axis=0, keepdims=True), 0.0)
    z = s.sum(axis=0, keepdims=True)
    z[z == 0] = 1.0
    return s / z**alpha


def _proportional(rng: np.random.Generator, weights: np.ndarray) -> int:
    w = np.clip(weights, 0, None)
    total = w.sum()
    p = w / total if total > 0 else np.full(len(w), 1.0 / len(w))
    return int(rng.choice(len(w), p=p))


def choose_parents(
    rng: np.random.Generator, f: np.ndarray, use_attraction: bool
) -> tuple[int, int]:
    fitness = f.sum(axis=1)
    p1 = _proportional(rng, fitness)
    if not use_attraction:
        # As the reference code (SakanaAI/natural_niches, also its GA): both parents drawn
        # independently, with replacement, so a parent can mate with itself.
        return p1, _proportional(rng, fitness)
    g = np.maximum(0.0, f - f[p1]).sum(axis=1)
    if g.sum() > 0:
        return p1, _proportional(rng, g)
    # p1 solves everything any member solves: no attraction signal, take another member
    others = fitness.copy()
    if len(others) > 1:
        others[p1] = 0.0
    return p1, _proportional(rng, others)


def crossover(a: np.ndarray, b: np.ndarray, split: int, w: float) -> np.ndarray:
    """SLERP from a (t = 0) towards b with t_i = w before ``split`` and 1 − w from it on."""
    t = np.where(np.arange(a.size) < split, w, 1.0 - w)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(np.dot(a / na, b / nb)) if na > 0 and nb > 0 else 1.0
    omega = math.acos(max(-1.0, min(1.0, cos)))
    if math.sin(omega) <= 1e-6:
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / math.sin(omega)


@register_driver
class M2N2(Driver):
    name = "m2n2"
    options_cls: ClassVar[type] = M2N2Params  # the dataclass driver.options are parsed into
    #: One line per driver.options key, for docs/config.md (evomerge schema).
    option_help: ClassVar[dict[str, str]] = {
        "init_points": "extra genomes that enter the initial archive after x0 (e.g. the experts)",
        "archive_size": "P: genomes kept in the archive",
        "alpha": "resource-sharing exponent: 1 is M2N2, 0 a plain GA (the paper's ablation)",
        "use_attraction": "pick the second parent by what it solves that the first does not",
        "use_splitpoint": "crossover with a random split point (false: one mixing ratio for all genes)",
        "mutation_std": "Gaussian mutation per gene (0 when merging experts; 0.01 from scratch)",
        "init": "initial archive: uniform in the box, normal (N(0, init_std^2)) or given (x0 + init_points)",
        "init_std": "init normal: the standard deviation",
        "batch_size": "children asked per generation",
    }
    can_ask_ahead = True

    @classmethod
    def racing_refusal(cls) -> str:
        return "competes on every candidate's per-item scores (its resource competition)"

    def __init__(
        self,
        dim: int,
        lower: np.ndarray,
        upper: np.ndarray,
        x0: np.ndarray,
        *,
        seed: int,
        init_points: Sequence[Sequence[float]] = (),
        **options: Any,
    ) -> None:
        super().__init__(dim, lower, upper, x0, seed=seed)
        try:
            self.params = M2N2Params(**options)
        except TypeError as err:
            raise UserInputError(
                f"m2n2: {err}; options are {list(M2N2Params.__annotations__)}"
            ) from None
        if self.params.archive_size < 2:
            raise UserInputError("m2n2: archive_size must be >= 2")
        if self.params.init not in ("uniform", "normal", "given"):
            raise UserInputError(f"m2n2: init {self.params.init!r}; valid: uniform, normal, given")
        if self.params.init == "given" and not init_points:
            raise UserInputError("m2n2: init 'given' needs init_points (e.g. the experts' genomes)")
        self.batch_size = self.params.batch_size
        self._rng = np.random.default_rng(seed)
        self._init = [np.asarray(x0, float)] + [np.asarray(p, float) for p in init_points]
        self._genomes = np.zeros((0, dim))
        self._scores: np.ndarray | None = None
        self._fitness = np.zeros(0)
        self._next = 0
        self._pending: dict[int, Candidate] = {}
        self._best: tuple[Candidate, float] | None = None
        self._warned = False  # the scalar-fitness warning, once per process

    # ---- ask ------------------------------------------------------------------------------
    def _initial(self, i: int) -> np.ndarray:
        if i < len(self._init):
            return self._init[i].copy()
        if self.params.init == "normal":
            return self._rng.normal(0.0, self.params.init_std, self.dim)
        return self._rng.uniform(self.lower, self.upper)

    def _n_initial(self) -> int:
        if self.params.init == "given":
            return len(self._init)
        return self.params.archive_size

    def _child(self) -> tuple[np.ndarray, dict[str, Any]]:
        f = shared_fitness(self._scores, self.params.alpha)
        p1, p2 = choose_parents(self._rng, f, self.params.use_attraction)
        split = int(self._rng.integers(0, self.dim)) if self.params.use_splitpoint else self.dim
        w = float(self._rng.uniform())
        x = crossover(self._genomes[p1], self._genomes[p2], split, w)
        if self.params.mutation_std > 0:
            x = x + self._rng.normal(0.0, self.params.mutation_std, self.dim)
        return x, {"parents": (p1, p2), "split": split, "w": w}

    def ask(self, n: int | None = None) -> list[Candidate]:
        out = []
        for _ in range(n or self.batch_size):
            if self._next < self._n_initial() or len(self._genomes) < 2:
                x, meta = self._initial(self._next), {"init": True}
            else:
                x, meta = self._child()
            x = np.clip(x, self.lower, self.upper)
            c = Candidate(self._next, x, meta)
            self._pending[c.index] = c
            self._next += 1
            out.append(c)
        return out

    # ---- tell -----------------------------------------------------------------------------
    def _row(self, fitness: float, detail: EvalResult | None) -> np.ndarray:
        if detail is None or not detail.tasks:
            return np.array([fitness])
        parts = []
        for name in sorted(detail.tasks):
            t = detail.tasks[name]
            if not t.per_example:  # the scalar fallback: the task's score is one resource
                self._warn_scalar(name)
            parts.append(np.asarray(t.per_example or (t.score,), float))
        return np.concatenate(parts)

    def _warn_scalar(self, task: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(SCALAR_WARNING.format(task=task))

    def _admit(self, x: np.ndarray, row: np.ndarray, fitness: float) -> None:
        if self._scores is not None and row.size != self._scores.shape[1]:
            raise UserInputError(
                f"m2n2.tell: per-example row has {row.size} values, the archive has "
                f"{self._scores.shape[1]}; every candidate must be scored on the same examples"
            )
        if len(self._genomes) < self.params.archive_size:
            self._genomes = np.vstack([self._genomes, x[None]])
            self._scores = (
                row[None] if self._scores is None else np.vstack([self._scores, row[None]])
            )
            self._fitness = np.append(self._fitness, fitness)
            return
        # full archive: compare the child with the P members, overwrite the loser in place
        pool = np.vstack([self._scores, row[None]])
        drop = int(np.argmin(shared_fitness(pool, self.params.alpha).sum(axis=1)))
        if drop < len(self._genomes):
            self._genomes[drop], self._scores[drop], self._fitness[drop] = x, row, fitness

    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[float],
        details: Sequence[EvalResult | None] | None = None,
    ) -> None:
        values = check_tell(self.name, candidates, fitness, self._pending)
        details = list(details) if details is not None else [None] * len(candidates)
        for c, f, d in zip(candidates, values, details):
            del self._pending[c.index]
            if math.isnan(f):
                continue  # a failed child never enters the archive
            self._admit(c.x, self._row(f, d), f)
            if self._best is None or f > self._best[1]:
                self._best = (c, f)

    def stop(self) -> bool:
        return False

    @property
    def best(self) -> tuple[Candidate, float] | None:
        return self._best

    @property
    def archive(self) -> tuple[np.ndarray, np.ndarray]:
        """(genomes P×D, raw fitness P) of the current archive."""
        return self._genomes.copy(), self._fitness.copy()

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self._rng.bit_generator.state,
            "genomes": self._genomes.copy(),
            "scores": None if self._scores is None else self._scores.copy(),
            "fitness": self._fitness.copy(),
            "next": self._next,
            "pending": dict(self._pending),
            "best": self._best,
            "init": list(self._init),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._genomes = state["genomes"].copy()
        self._scores = None if state["scores"] is None else state["scores"].copy()
        self._fitness = state["fitness"].copy()
        self._next = state["next"]
        self._pending = dict(state["pending"])
        self._best = state["best"]
        self._init = list(state["init"])
