"""The pool space (kind ``fw_pool``): coefficients of a task-arithmetic merge over a pool.

Searched by the frank_wolfe and adamerging drivers, whose gradient jobs
(``evomerge.workers.gradient_job``) rebuild a candidate's weights from its genes.

FW-Merging (Chen et al., "FW-Merging: Scaling Model Merging with Frank-Wolfe Optimization",
ICCV 2025) moves inside the hull of the pool's checkpoints. Every hard task-arithmetic step and
every FW-Soft coefficient set is theta_base + sum_k W[G, k] tau_k, so a candidate's genes are W
(one row per tensor group, one column per pool member) and ``decode`` gives a mergekit-shaped
``task_arithmetic`` recipe with per-tensor weights (filter rules).

The TIES-trimmed hard step (theta <- theta + a * trim(s - theta)) is not linear in W; its genes
are W0 (the start) followed by the step history (a_t, selected member per group or -1), and
``decode`` gives a chain of ``ties`` recipes whose base is the previous one (``recipe:<digest>``,
each link kept in ``self.links``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evomerge.errors import UserInputError
from evomerge.io.lazy_checkpoint import float_tensor_names
from evomerge.recipe import RECIPE_REF_PREFIX, FilterRule, ModelRef, Recipe
from evomerge.spaces.base import SearchSpace

VARIANTS = ("task_arithmetic", "ties", "soft")
INITS = ("base", "task_arithmetic")


class FWPoolSpace(SearchSpace):
    def __init__(
        self,
        base: str,
        members: Sequence[str],
        *,
        tensors: Sequence[str] | None = None,
        granularity: str = "layer",
        variant: str = "task_arithmetic",
        iterations: int = 10,
        density: float = 0.3,
        init: str = "base",
        init_scale: float = 0.3,
        resolver=None,
    ) -> None:
        _check_choice("granularity", granularity, ("layer", "task"))
        _check_choice("variant", variant, VARIANTS)
        _check_choice("init", init, INITS)
        if not members:
            raise UserInputError("frank_wolfe: the pool is empty; list at least one model")
        if len(set(members)) != len(members):
            raise UserInputError(f"frank_wolfe: pool members repeat: {list(members)}")
        if not 0.0 < density <= 1.0:
            raise UserInputError(f"frank_wolfe: density {density} must be in (0, 1]")
        self.base, self.members = base, list(members)
        self.resolve = resolve = resolver or _identity
        self.tensors = sorted(tensors) if tensors is not None else float_tensor_names(resolve(base))
        if not self.tensors:
            raise UserInputError(f"{base}: no floating-point tensors to merge")
        self.granularity, self.variant = granularity, variant
        self.iterations, self.density = int(iterations), float(density)
        self.init, self.init_scale = init, float(init_scale)
        self.groups = [[t] for t in self.tensors] if granularity == "layer" else [self.tensors]
        self.links: dict[str, Recipe] = {}
        self._genes: dict[str, np.ndarray] = {}

    # ---- layout -------------------------------------------------------------------------------
    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def n_coef(self) -> int:
        return self.n_groups * self.n_members

    @property
    def dim(self) -> int:
        if self.variant == "ties":
            return self.n_coef + self.iterations * (1 + self.n_groups)
        return self.n_coef

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.zeros(self.dim), np.ones(self.dim)
        if self.variant == "ties":
            hist_lo = np.tile(np.r_[0.0, np.full(self.n_groups, -1.0)], self.iterations)
            hist_hi = np.tile(
                np.r_[1.0, np.full(self.n_groups, self.n_members - 1.0)], self.iterations
            )
            lo[self.n_coef :], hi[self.n_coef :] = hist_lo, hist_hi
        return lo, hi

    def x0(self) -> np.ndarray:
        x = np.zeros(self.dim)
        if self.init == "task_arithmetic":
            x[: self.n_coef] = self.init_scale
        if self.variant == "ties":
            x[self.n_coef :] = np.tile(np.r_[0.0, np.full(self.n_groups, -1.0)], self.iterations)
        return x

    def gene_names(self) -> list[str]:
        names = [f"{m}/{_group_label(g)}/weight" for g in self.groups for m in self.members]
        if self.variant == "ties":
            for t in range(self.iterations):
                names.append(f"step{t}/a")
                names += [f"step{t}/{_group_label(g)}/member" for g in self.groups]
        return names

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W of shape (G, K), history of shape (T, 1 + G); empty history unless TIES)."""
        x = np.asarray(x, dtype=float).reshape(-1)
        if x.shape != (self.dim,):
            raise ValueError(f"genes have shape {x.shape}, the pool space needs ({self.dim},)")
        w = x[: self.n_coef].reshape(self.n_groups, self.n_members)
        hist = x[self.n_coef :].reshape(-1, 1 + self.n_groups)
        return w, hist

    # ---- decoding -----------------------------------------------------------------------------
    def decode(self, x: np.ndarray) -> Recipe:
        w, hist = self.split(x)
        recipe = self.ta_recipe(w)
        for row in hist:
            a, sel = float(row[0]), np.rint(row[1:]).astype(int)
            if a <= 0 or not (sel >= 0).any():
                continue
            self.links[recipe.digest()] = recipe
            recipe = self._ties_link(recipe, a, sel)
        self._genes[recipe.digest()] = np.asarray(x, dtype=float).copy()
        return recipe

    def genes_of(self, recipe: Recipe) -> np.ndarray:
        """The genes a recipe was decoded from (lets a worker build it with ``build_theta``)."""
        try:
            return self._genes[recipe.digest()]
        except KeyError:
            raise ValueError(
                f"recipe {recipe.digest()[:12]} was not decoded by this pool space"
            ) from None

    def ta_recipe(self, w: np.ndarray) -> Recipe:
        models = []
        for k, m in enumerate(self.members):
            col = w[:, k]
            if not np.any(col != 0):
                continue
            models.append(ModelRef(model=m, parameters={"weight": self._weight_value(col)}))
        if not models:  # theta = theta_base: one zero-weight member keeps the recipe valid
            models = [ModelRef(model=self.members[0], parameters={"weight": 0.0})]
        return Recipe(merge_method="task_arithmetic", base_model=self.base, models=models)

    def _weight_value(self, col: np.ndarray) -> float | list[FilterRule]:
        if self.granularity == "task":
            return float(col[0])
        # mergekit takes the first rule whose filter is a substring of the tensor name; longest
        # names first so that e.g. "0.weight" cannot capture "10.weight".
        order = sorted(range(len(self.tensors)), key=lambda i: (-len(self.tensors[i]), i))
        return [FilterRule(filter=self.tensors[i], value=float(col[i])) for i in order]

    def _ties_link(self, prev: Recipe, a: float, sel: np.ndarray) -> Recipe:
        models = []
        for k, m in enumerate(self.members):
            col = np.where(sel == k, a, 0.0)
            if col.any():
                models.append(ModelRef(model=m, parameters={"weight": self._weight_value(col)}))
        # One member per tensor and normalize off: mergekit's ties is then exactly
        # theta + a * top-density(theta_s - theta), the reference code's TIES step.
        return Recipe(
            merge_method="ties",
            base_model=RECIPE_REF_PREFIX + prev.digest(),
            models=models,
            parameters={"density": self.density, "normalize": False},
        )


def _identity(ref: str) -> str:
    return ref


def _group_label(group: list[str]) -> str:
    return group[0] if len(group) == 1 else "all"


def _check_choice(field: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise UserInputError(f"frank_wolfe {field} {value!r} is unknown; valid: {', '.join(valid)}")
