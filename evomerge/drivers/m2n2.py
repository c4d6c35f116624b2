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
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers._common import generator_at
from evomerge.drivers.base import Candidate, Driver, register_driver
from evomerge.drivers.m2n2_state import M2N2Params, M2N2State
from evomerge.errors import UserInputError
from evomerge.results import EvalResult

log = logging.getLogger(__name__)
SCALAR_WARNING = (
    "m2n2: task {task!r} gives one score per candidate, no per-example scores, so resource "
    "competition and attraction have no niches and M2N2 runs as a plain elitist GA; return "
    "evomerge.fitness.TaskScore.from_examples([one value per item]) from the fitness function "
    "for M2N2 proper, or use driver cma_es"
)


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
    options_cls: ClassVar[type] = M2N2Params
    can_ask_ahead = True
    # the archive is ranked by shared fitness over the per-example rows, not by the told
    # value: fitness.constraints tell an infeasible child as a failure (told.told_values)
    ranks_by_details = True

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
        **options: Any,
    ) -> None:
        super().__init__(dim, lower, upper, x0, seed=seed, **options)
        self.params = p = self.options
        self.batch_size = p.batch_size
        self.state = M2N2State(
            rng=np.random.default_rng(seed).bit_generator.state,
            genomes=np.zeros((0, dim)),
            scores=None,
            fitness=np.zeros(0),
            init=[np.asarray(x0, float)] + [np.asarray(x, float) for x in p.init_points],
        )
        self._warned = False  # the scalar-fitness warning, once per process (not search state)

    # ---- ask ------------------------------------------------------------------------------
    def _initial(self, rng: np.random.Generator, i: int) -> np.ndarray:
        if i < len(self.state.init):
            return self.state.init[i].copy()
        if self.params.init == "normal":
            return rng.normal(0.0, self.params.init_std, self.dim)
        return rng.uniform(self.lower, self.upper)

    def _n_initial(self) -> int:
        if self.params.init == "given":
            return len(self.state.init)
        return self.params.archive_size

    def _child(self, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        s = self.state
        f = shared_fitness(s.scores, self.params.alpha)
        p1, p2 = choose_parents(rng, f, self.params.use_attraction)
        split = int(rng.integers(0, self.dim)) if self.params.use_splitpoint else self.dim
        w = float(rng.uniform())
        x = crossover(s.genomes[p1], s.genomes[p2], split, w)
        if self.params.mutation_std > 0:
            x = x + rng.normal(0.0, self.params.mutation_std, self.dim)
        return x, {"parents": (p1, p2), "split": split, "w": w}

    def ask(self, n: int | None = None) -> list[Candidate]:
        s, out = self.state, []
        rng = generator_at(s.rng)
        # the archive does not change between asks (only tell admits), so one state serves all
        for _ in range(n or self.batch_size):
            i = self.state.next
            if i < self._n_initial() or len(s.genomes) < 2:
                x, meta = self._initial(rng, i), {"init": True}
            else:
                x, meta = self._child(rng)
            out.append(self._issue(np.clip(x, self.lower, self.upper), meta))
        self.state = replace(self.state, rng=rng.bit_generator.state)
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

    def _admitted(self, s: M2N2State, x: np.ndarray, row: np.ndarray, f: float) -> M2N2State:
        """The state with the told child in the archive (or without, if it is the weakest)."""
        if s.scores is not None and row.size != s.scores.shape[1]:
            raise UserInputError(
                f"m2n2.tell: per-example row has {row.size} values, the archive has "
                f"{s.scores.shape[1]}; every candidate must be scored on the same examples"
            )
        if len(s.genomes) < self.params.archive_size:
            scores = row[None] if s.scores is None else np.vstack([s.scores, row[None]])
            genomes = np.vstack([s.genomes, x[None]])
            return replace(s, genomes=genomes, scores=scores, fitness=np.append(s.fitness, f))
        # full archive: compare the child with the P members, the loser's row takes the child
        pool = np.vstack([s.scores, row[None]])
        drop = int(np.argmin(shared_fitness(pool, self.params.alpha).sum(axis=1)))
        if drop == len(s.genomes):
            return s
        genomes, scores, fitness = s.genomes.copy(), s.scores.copy(), s.fitness.copy()
        genomes[drop], scores[drop], fitness[drop] = x, row, f
        return replace(s, genomes=genomes, scores=scores, fitness=fitness)

    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[float],
        details: Sequence[EvalResult | None] | None = None,
    ) -> None:
        values = self._check_tell(candidates, fitness)
        details = list(details) if details is not None else [None] * len(candidates)
        for c, f, d in zip(candidates, values, details):
            # told before the archive step: a row refused below leaves the earlier children told
            self._told(c)
            if math.isnan(f):
                continue  # a failed child never enters the archive
            self.state = self._admitted(self.state, c.x, self._row(f, d), f)
            self._note_best(c, f)

    def stop(self) -> bool:
        return False

    @property
    def archive(self) -> tuple[np.ndarray, np.ndarray]:
        """(genomes P×D, raw fitness P) of the current archive."""
        return self.state.genomes.copy(), self.state.fitness.copy()

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = M2N2State.from_state_dict(state)
