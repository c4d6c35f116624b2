"""Data-flow space: Akiba et al., "Evolutionary Optimization of Model Merging Recipes" (2024), DFS.

The merged model is a path of transformer layers drawn from the sources; embeddings, final norm
and LM head come from model A (the first source), declared as the recipe's ``base_model``.
Mergekit executes a passthrough ``slices`` recipe taking embeddings from the first slice's model
and the final norm and head from the last slice's (it ignores ``base_model`` there): the two
readings agree whenever the path starts and ends on one of A's layers (x0 does); the evomerge
engine must honour ``base_model`` for passthrough slices, and a mergekit export of a path that
starts or ends on another model differs in those tensors.

Pool, slots, r and T. The pool lists model A's layers 0..L_A-1, then B's 0..L_B-1 (then any
further model's): M = sum of L_i pool layers. The pool is repeated r times (``repeats``, default
3 as in the paper) to give T = M * r slots, so a path can revisit a layer up to r times and can
go back and forth between models up to r times. r = 3 is the paper's choice: r = 1 only allows
monotone "A-prefix then B" interleavings, and every extra repeat adds M indicator genes (and
search cost) for paths few candidates use.

Genes, in this order:

* indicator I in [-1, 1]^T: slot t is on the path iff I_t > 0; the path keeps slot order.
  x0: +0.5 on the first copy's A-slots, -0.5 elsewhere, so the start is model A itself
  (``start: k``: the first copy's slots of model k, under A's embeddings and head).
* scales (``scales``), each a gene g in [-R, R] mapped to 2**g (R = ``scale_log2_range``,
  default 1, so scales lie in [0.5, 2]; log scale so up- and down-scaling are symmetric and the
  scale can never reach 0); x0 g = 0, i.e. scale 1:
  - ``full`` (paper): a matrix W of (M + 1) x M genes. Row i + 1, column j: input scale of pool
    layer j when the path reaches it from pool layer i (the paper's M x M matrix). Row 0: input
    scale of the path's first layer, reached from the embedding (our addition: the paper leaves
    it open, and scaling the embedding matters because it sets the embedding's weight against
    every later residual write).
  - ``per_layer``: M genes, one input scale per pool layer whatever precedes it (the reduced
    form for large pools: M genes instead of M^2 + M).
  - ``none``: no scale genes; every scale is 1.

Path length. Between 1 and ``max_path_length`` (default 2 * L_A: deeper merged models cost
proportionally more to evaluate, and the paper's best paths stayed well within it). If more
slots are on, the ones with the largest I_t are kept (ties: earlier slot), still in slot order;
if none is on, the single slot with the largest I_t is used.

Folding the scales into weights. Llama-style blocks are pre-norm and RMSNorm is scale-invariant
(up to its eps), so multiplying a block's input, the residual stream, by c equals carrying a
factor C_k = s_1 * ... * s_k in the stream and dividing block k's residual-writing projections
(``residual_writers``: o_proj and down_proj) by C_k; the final norm removes C. A path therefore
decodes to a ``passthrough`` ``slices`` recipe with one 1-layer slice per hop and per-slice
``scale`` rules ``[{filter: o_proj, value: 1/C_k}, {filter: down_proj, value: 1/C_k},
{value: 1.0}]`` (omitted where C_k = 1, so model A's own path is A bit for bit). Valid only for
pre-norm architectures without post-sublayer norms (Llama, Mistral, Qwen2; not Gemma 2/3).
The compact form of a candidate is ``path_hops(x)``: a list of (pool layer, input scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evomerge.errors import UserInputError
from evomerge.recipe import FilterRule, Recipe, Slice, SliceSource
from evomerge.spaces.base import SearchSpace
from evomerge.spaces.config import DataflowSpaceConfig
from evomerge.spaces.parameter import model_tag

PASSTHROUGH = "passthrough"
SCALE_PARAM = "scale"  # the passthrough operator's per-input multiplier


class DataflowSpace(SearchSpace):
    def __init__(
        self,
        cfg: DataflowSpaceConfig,
        *,
        models: Sequence[str],
        num_layers: int | Sequence[int],
    ) -> None:
        if len(models) < 1:
            raise UserInputError("models: the data-flow space needs at least one source model")
        self.cfg = cfg
        self.models = list(models)
        counts = [num_layers] * len(models) if isinstance(num_layers, int) else list(num_layers)
        if len(counts) != len(models) or any(n < 1 for n in counts):
            raise UserInputError(
                f"num_layers {counts} must give one positive layer count per model {models}"
            )
        self.layer_counts = counts
        start = getattr(cfg, "start", 0)
        if start >= len(models):
            raise UserInputError(
                f"space.start: {start} is not a model index (0..{len(models) - 1}); it picks the "
                "source whose layers form the starting path"
            )
        self.start = start
        # pool[p] = (model index, layer index): A's layers, then B's, ...
        self.pool = [(mi, li) for mi, n in enumerate(counts) for li in range(n)]
        self.M = len(self.pool)
        self.T = self.M * cfg.repeats
        self.max_path_length = cfg.max_path_length or 2 * counts[0]
        self.n_scales = {"full": (self.M + 1) * self.M, "per_layer": self.M, "none": 0}[cfg.scales]

    # ---- SearchSpace -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.T + self.n_scales

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.cfg.scale_log2_range
        lo = np.concatenate([-np.ones(self.T), np.full(self.n_scales, -r)])
        hi = np.concatenate([np.ones(self.T), np.full(self.n_scales, r)])
        return lo, hi

    def x0(self) -> np.ndarray:
        ind = np.full(self.T, -0.5)
        first = sum(self.layer_counts[: self.start])  # the first copy's slots of model start
        ind[first : first + self.layer_counts[self.start]] = 0.5
        return np.concatenate([ind, np.zeros(self.n_scales)])

    def pool_name(self, p: int) -> str:
        mi, li = self.pool[p]
        return f"{model_tag(self.models[mi], mi)}.L{li}"

    def gene_names(self) -> list[str]:
        names = [f"slot{t}/{self.pool_name(t % self.M)}/on" for t in range(self.T)]
        if self.cfg.scales == "full":
            rows = ["emb"] + [self.pool_name(i) for i in range(self.M)]
            names += [f"W/{r}->{self.pool_name(j)}" for r in rows for j in range(self.M)]
        elif self.cfg.scales == "per_layer":
            names += [f"scale/{self.pool_name(j)}" for j in range(self.M)]
        return names

    def decode(self, x: np.ndarray) -> Recipe:
        return self.hops_to_recipe(self.path_hops(x))

    # ---- the path ----------------------------------------------------------------------------
    def path_slots(self, x: np.ndarray) -> list[int]:
        """Slots on the path, in slot order, after the length limits."""
        ind = self._check_x(x)[: self.T]
        on = [t for t in range(self.T) if ind[t] > 0]
        if not on:
            return [int(np.argmax(ind))]
        if len(on) > self.max_path_length:
            # stable sort on -I keeps the earlier slot among equal indicators
            keep = sorted(on, key=lambda t: -ind[t])[: self.max_path_length]
            on = sorted(keep)
        return on

    def path_hops(self, x: np.ndarray) -> list[tuple[int, float]]:
        """Compact form: (pool layer, input scale) per hop; the first hop's scale is from the
        embedding."""
        x = self._check_x(x)
        genes = x[self.T :]
        hops, prev = [], -1  # -1: the embedding
        for t in self.path_slots(x):
            j = t % self.M
            hops.append((j, self._scale(genes, prev, j)))
            prev = j
        return hops

    def _scale(self, genes: np.ndarray, prev: int, j: int) -> float:
        r = self.cfg.scale_log2_range
        if self.cfg.scales == "none":
            return 1.0
        g = genes[(prev + 1) * self.M + j] if self.cfg.scales == "full" else genes[j]
        return float(2.0 ** float(np.clip(g, -r, r)))

    def hops_to_recipe(self, hops: Sequence[tuple[int, float]]) -> Recipe:
        """Fold the input scales into the residual writers (see the module docstring)."""
        if not hops:
            raise UserInputError("a data-flow path needs at least one layer")
        slices, cum = [], 1.0
        for p, s in hops:
            if not 0 <= p < self.M or not s > 0:
                raise UserInputError(
                    f"hop ({p}, {s}): pool layer must be in [0, {self.M}), scale > 0"
                )
            cum *= float(s)
            mi, li = self.pool[p]
            params = {} if cum == 1.0 else {SCALE_PARAM: self._scale_rules(1.0 / cum)}
            src = SliceSource(model=self.models[mi], layer_range=(li, li + 1), parameters=params)
            slices.append(Slice(sources=[src]))
        return Recipe(
            merge_method=PASSTHROUGH,
            slices=slices,
            base_model=self.models[0],  # embeddings, final norm, LM head: model A's
            dtype=self.cfg.dtype,
            seed=self.cfg.seed,
        )

    def _scale_rules(self, inv: float) -> list[FilterRule]:
        rules = [FilterRule(filter=f, value=inv) for f in self.cfg.residual_writers]
        return rules + [FilterRule(filter=None, value=1.0)]

    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float).reshape(-1)
        if x.shape != (self.dim,):
            raise ValueError(f"expected a vector of {self.dim} genes, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("gene vector holds NaN or Inf")
        return x
