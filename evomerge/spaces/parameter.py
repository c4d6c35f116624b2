"""Parameter space: Akiba et al., "Evolutionary Optimization of Model Merging Recipes" (2024), PS.

Sakana's PS evolves a weight and a density per source model (per layer in the method; one pair
per model in the published recipe) for DARE-TIES with CMA-ES, every gene in [0, 1] starting at
0.5, and never forces the weights onto the simplex. This space generalizes that to any registered
operator and to anything in between one value per model and one per layer.

Genes. One gene per (layer group x tensor filter x model x per-model param), then one per
(layer group x tensor filter x global param). Tensor filters are the configured ``filters`` plus a
catch-all (``*``) for every tensor no filter matches. Every gene lives in [0, 1] (so one CMA-ES
sigma fits all) and maps onto the param's bounds:

* ``linear`` (default): value = lo + u * (hi - lo)
* ``log`` (params listed in ``log_scale``; needs lo > 0): value = lo * (hi / lo) ** u

Bounds come from the operator's ``OpSpec.param_bounds``, overridden by the config's ``bounds``
(weight, density and t are [0, 1] as in Sakana). The start point is u = 0.5 (mid-box: Sakana's 0.5
for [0, 1] params) unless ``x0`` gives a value in param units.

Layer structure. ``layer_groups = G`` splits the L layers into G contiguous groups of near-equal
size (group g covers layers [floor(g L / G), floor((g+1) L / G))).

* Piecewise constant (``smooth: false``, G > 1) decodes to a ``slices`` recipe, one slice per
  group, each source carrying its scalar (or filter-rule) params and the slice carrying the global
  params. We chose slices over ``layers.<i>.`` filter rules because a slice composes with tensor
  filters (a rule matches one substring, so "layer 3 AND mlp" is not expressible in general) and
  it is exactly what mergekit executes. Mergekit semantics to know: tensors outside the layers
  take the first slice's values (embeddings) and the last slice's (final norm, LM head).
* Smooth (``smooth: true``) decodes to a ``models`` recipe whose params are lists: the G genes
  are control points of a gradient, interpolated linearly over depth t = layer / (L - 1)
  (mergekit gradient semantics; non-layer tensors read t = 0, i.e. the first control point).
* G = 1 decodes to a ``models`` recipe with scalar params (Sakana's published form).

All three are valid mergekit YAML. ``decode`` is deterministic and touches neither disk nor RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evomerge.errors import UserInputError
from evomerge.recipe import FilterRule, ModelRef, Recipe, Slice, SliceSource
from evomerge.spaces.base import SearchSpace
from evomerge.spaces.config import ParameterSpaceConfig
from evomerge.spaces.opinfo import OpInfo, op_info


@dataclass(frozen=True)
class _Gene:
    param: str
    group: int
    filter: str | None
    model: int | None  # None for a global param


def layer_group_ranges(num_layers: int, groups: int) -> list[tuple[int, int]]:
    """[start, end) of each of ``groups`` contiguous, near-equal layer groups."""
    if not 1 <= groups <= num_layers:
        raise UserInputError(
            f"layer_groups = {groups} must be between 1 and the model's {num_layers} layers"
        )
    edges = [g * num_layers // groups for g in range(groups + 1)]
    return [(edges[g], edges[g + 1]) for g in range(groups)]


def tokenizer_source_path(
    value: str | int | None, models: list[str], base: str | None
) -> str | None:
    """The recipes' tokenizer_source: base / union as they are, a model index or path -> its
    (resolved) path."""
    if value is None or value in ("base", "union"):
        return value  # type: ignore[return-value]
    if isinstance(value, int) and 0 <= value < len(models):
        return models[value]
    known = models + ([base] if base else [])
    if isinstance(value, str) and value in known:
        return value
    raise UserInputError(
        f"space.tokenizer_source: {value!r} is not base, union, a model index "
        f"(0..{len(models) - 1}) or one of the models' paths; use one of those"
    )


def model_tag(path: str, index: int) -> str:
    """Short readable label for gene names: index plus the folder's basename."""
    name = path.rstrip("/").split("/")[-1] or path
    return f"m{index}:{name}"


class ParameterSpace(SearchSpace):
    def __init__(
        self,
        cfg: ParameterSpaceConfig,
        *,
        base: str | None,
        models: Sequence[str],
        num_layers: int,
        op: OpInfo | None = None,
    ) -> None:
        self.cfg = cfg
        # ``op`` lets a caller describe an operator the registry does not hold (e.g. a
        # mergekit-only method for export); normally it is read from evomerge.merge.ops.
        self.op: OpInfo = op or op_info(cfg.merge_method)
        if self.op.needs_base and not base:
            raise UserInputError(
                f"merge_method {cfg.merge_method!r} needs a base model; set the experiment's "
                "base_model"
            )
        if self.op.needs_activations and cfg.calibration is None:
            raise UserInputError(
                f"space.calibration: merge_method {cfg.merge_method!r} reads the base model's "
                "activations; add calibration: {file: <text file, one sample per line>}"
            )
        self.base = base if self.op.needs_base else None
        # The base is the reference point, not a merged input: it gets no genes.
        self.models = [m for m in models if m != self.base]
        if not self.models:
            raise UserInputError("models: list at least one source model besides the base")
        self.num_layers = num_layers
        self.tokenizer_source = tokenizer_source_path(cfg.tokenizer_source, list(models), base)
        if cfg.smooth:  # control points of a gradient over the whole depth, any number
            self.groups = [(0, num_layers)] * cfg.layer_groups
        else:
            self.groups = layer_group_ranges(num_layers, cfg.layer_groups)
        self.filters: list[str | None] = [*cfg.filters, None]
        self.model_params = self._choose_params(cfg)
        self.global_params = list(cfg.global_params)
        self._check_global(cfg)
        self._bounds = {p: self._param_bounds(p) for p in self.model_params + self.global_params}
        self._genes = self._layout()

    # ---- construction ----------------------------------------------------------------------
    def _choose_params(self, cfg: ParameterSpaceConfig) -> list[str]:
        searchable = self.op.searchable(self.op.per_model_params)
        if cfg.params is None:
            return searchable
        for p in cfg.params:
            if p not in searchable:
                raise UserInputError(
                    f"params: {p!r} is not a numeric per-model parameter of "
                    f"{self.op.name!r}; choose from {searchable}"
                )
        return list(cfg.params)

    def _check_global(self, cfg: ParameterSpaceConfig) -> None:
        searchable = self.op.searchable(self.op.global_params)
        for p in cfg.global_params:
            if p not in searchable:
                raise UserInputError(
                    f"global_params: {p!r} is not a numeric global parameter of "
                    f"{self.op.name!r}; choose from {searchable}"
                )
            if p in cfg.fixed:
                raise UserInputError(f"{p!r} is both searched (global_params) and fixed")
        known = set(self.op.global_params) | set(self.op.per_model_params)
        for p in cfg.fixed:
            if p not in known:
                raise UserInputError(
                    f"fixed: {p!r} is not a parameter of {self.op.name!r}; known: {sorted(known)}"
                )
        if not self.model_params and not self.global_params:
            raise UserInputError(
                f"the space for {self.op.name!r} has no genes: list global_params "
                f"(e.g. {searchable}) or per-model params"
            )

    def _param_bounds(self, p: str) -> tuple[float, float, bool]:
        lo, hi = self.cfg.bounds.get(p) or self.op.bounds(p)
        log = p in self.cfg.log_scale
        if log and lo <= 0:
            raise UserInputError(f"log_scale: {p!r} needs a lower bound > 0, got {lo}")
        return float(lo), float(hi), log

    def _layout(self) -> list[_Gene]:
        genes = []
        for g in range(len(self.groups)):
            for f in self.filters:
                for m in range(len(self.models)):
                    genes += [_Gene(p, g, f, m) for p in self.model_params]
                genes += [_Gene(p, g, f, None) for p in self.global_params]
        return genes

    # ---- SearchSpace -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self._genes)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(self.dim), np.ones(self.dim)

    def x0(self) -> np.ndarray:
        return np.array([self._to_unit(g.param, self.cfg.x0.get(g.param)) for g in self._genes])

    def gene_names(self) -> list[str]:
        return [self._gene_name(g) for g in self._genes]

    def _gene_name(self, g: _Gene) -> str:
        who = "global" if g.model is None else model_tag(self.models[g.model], g.model)
        if len(self.groups) == 1:
            where = "all"
        elif self.cfg.smooth:
            where = f"cp{g.group}"
        else:
            a, b = self.groups[g.group]
            where = f"layers.{a}-{b - 1}"
        return f"{who}/{where}/{g.filter or '*'}/{g.param}"

    def values(self, x: np.ndarray) -> np.ndarray:
        """Param-unit values of each gene (same order as ``gene_names``)."""
        x = self._check_x(x)
        return np.array([self._from_unit(g.param, u) for g, u in zip(self._genes, x, strict=True)])

    def decode(self, x: np.ndarray) -> Recipe:
        v = self.values(x)
        table: dict[tuple, float] = {
            (g.param, g.group, g.filter, g.model): float(val)
            for g, val in zip(self._genes, v, strict=True)
        }
        if len(self.groups) > 1 and not self.cfg.smooth:
            return self._slices_recipe(table)
        return self._models_recipe(table)

    # ---- transforms --------------------------------------------------------------------------
    def _to_unit(self, p: str, value: float | None) -> float:
        if value is None:
            return 0.5
        lo, hi, log = self._bounds[p]
        if not lo <= value <= hi:
            raise UserInputError(f"x0.{p} = {value} lies outside its bounds [{lo}, {hi}]")
        if log:
            return math.log(value / lo) / math.log(hi / lo)
        return (value - lo) / (hi - lo)

    def _from_unit(self, p: str, u: float) -> float:
        lo, hi, log = self._bounds[p]
        u = min(max(float(u), 0.0), 1.0)  # drivers may overshoot by rounding; the box is [0, 1]
        return lo * (hi / lo) ** u if log else lo + u * (hi - lo)

    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float).reshape(-1)
        if x.shape != (self.dim,):
            raise ValueError(f"expected a vector of {self.dim} genes, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("gene vector holds NaN or Inf")
        return x

    # ---- emission ----------------------------------------------------------------------------
    def _value(self, table: dict, p: str, f: str | None, m: int | None, groups: list[int]):
        """A scalar (one group) or a gradient (control points) for one param and filter."""
        vals = [table[(p, g, f, m)] for g in groups]
        return vals[0] if len(vals) == 1 else vals

    def _params(self, table: dict, names: list[str], m: int | None, groups: list[int]) -> dict:
        out: dict = {}
        for p in names:
            if len(self.filters) == 1:
                out[p] = self._value(table, p, None, m, groups)
            else:
                out[p] = [
                    FilterRule(filter=f, value=self._value(table, p, f, m, groups))
                    for f in self.filters
                ]
        return out

    def _recipe(self, **layout) -> Recipe:
        return Recipe(
            merge_method=self.op.name,
            base_model=self.base,
            dtype=self.cfg.dtype,
            seed=self.cfg.seed,
            tokenizer_source=self.tokenizer_source,
            calibration=self.cfg.calibration,
            **layout,
        )

    def _models_recipe(self, table: dict) -> Recipe:
        groups = list(range(len(self.groups)))
        models = [
            ModelRef(model=path, parameters=self._params(table, self.model_params, m, groups))
            for m, path in enumerate(self.models)
        ]
        if self.base and self.base not in self.models:
            models.append(ModelRef(model=self.base))
        glob = {**self.cfg.fixed, **self._params(table, self.global_params, None, groups)}
        return self._recipe(models=models, parameters=glob)

    def _slices_recipe(self, table: dict) -> Recipe:
        slices = []
        for g, (a, b) in enumerate(self.groups):
            sources = [
                SliceSource(
                    model=path,
                    layer_range=(a, b),
                    parameters=self._params(table, self.model_params, m, [g]),
                )
                for m, path in enumerate(self.models)
            ]
            if self.base and self.base not in self.models:
                # A slice gathers only its sources' tensors: the base must be one of them.
                sources.append(SliceSource(model=self.base, layer_range=(a, b)))
            glob = self._params(table, self.global_params, None, [g])
            slices.append(Slice(sources=sources, parameters=glob))
        return self._recipe(slices=slices, parameters=dict(self.cfg.fixed))
