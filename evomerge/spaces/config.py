"""Search-space configuration: what a ``search_spaces/*.yaml`` preset (or the ``space:`` block of
an experiment) may say. Frozen pydantic models, unknown keys rejected, discriminated by ``kind``.

YAML shapes (every key but ``kind`` is optional)::

    kind: parameter            # Sakana PS: genes per model x layer group x filter x param
    merge_method: dare_ties    # any registered operator (evomerge.merge.ops)
    layer_groups: 1            # 1 = one value per model; num_layers = one per layer
    smooth: false              # true: genes are gradient control points (needs layer_groups >= 2)
    filters: []                # tensor-name filters with their own genes, e.g. [self_attn, mlp]
    params: null               # per-model params to search; null = every numeric one of the op
    global_params: []          # global params to search, e.g. [lambda] or [t]
    bounds: {density: [0.1, 1.0]}   # override the operator's bounds (param units)
    x0: {weight: 0.5}          # starting value in param units (default: mid-box, Sakana's 0.5)
    tokenizer_source: union    # experts with other vocabularies: base | union | model index
    log_scale: []              # params whose gene maps log-uniformly onto their bounds
    fixed: {normalize: false}  # global params held fixed (emitted as-is into the recipe)
    dtype: float32
    seed: 0

    kind: dataflow             # Sakana DFS: a path of layers drawn from the sources
    repeats: 3                 # r: the pool of M layers is repeated r times (T = M*r slots)
    scales: full               # full: (M+1) x M matrix | per_layer: M | none: all 1
    scale_log2_range: 1.0      # scale = 2**g, g in [-range, range]
    max_path_length: null      # null = 2 * L_A
    start: 0                   # x0 path: this model's layers (embeddings/head stay model A's)
    residual_writers: [o_proj, down_proj]
    dtype: float32

    kind: hybrid               # DFS over the PS winner (model A) and one of the sources (B)
    winner: recipe:<sha256>    # or a path to the winner's materialized folder or recipe YAML
    partner: 0                 # index into the experiment's models, or a model path
    ...                        # every dataflow key
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from evomerge.errors import UserInputError
from evomerge.recipe import DTYPES, Calibration, ParamValue, format_validation_error


class _Frozen(BaseModel):
    # Field docstrings are the descriptions docs/config.md is generated from.
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class ParameterSpaceConfig(_Frozen):
    """Parameter space (Sakana PS, mergekit-evolve's genome, generalized to every operator)."""

    kind: Literal["parameter"] = "parameter"
    """parameter: genes are per model x layer group x filter operator parameters (Sakana PS)"""
    merge_method: str = "dare_ties"
    """the merge operator whose parameters are searched (evomerge list operators)"""
    layer_groups: int = Field(1, ge=1)
    """how many groups of consecutive layers get their own genes (1: one per model)"""
    smooth: bool = False
    """true: genes are control points of a gradient over the layers (needs layer_groups >= 2)"""
    filters: list[str] = Field(default_factory=list)
    """tensor-name substrings that get their own genes, e.g. [self_attn, mlp]"""
    params: list[str] | None = None
    """per-model parameters to search (null: every numeric one of the operator)"""
    global_params: list[str] = Field(default_factory=list)
    """operator-wide parameters to search, e.g. [lambda] or [t]"""
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    """search range per parameter in its own units, e.g. {density: [0.1, 1.0]}"""
    x0: dict[str, float] = Field(default_factory=dict)
    """starting value per parameter in its own units (default: the middle of its bounds)"""
    log_scale: list[str] = Field(default_factory=list)
    """parameters whose gene maps log-uniformly onto their bounds"""
    fixed: dict[str, ParamValue] = Field(default_factory=dict)
    """operator parameters held at a value, e.g. {normalize: false}"""
    # experts whose tokenizers differ: base | union | the index of one of the experiment's
    # models (or its path); each recipe carries it (mergekit's tokenizer_source)
    tokenizer_source: str | int | None = None
    """experts whose tokenizers differ: base, union, or one model's index or path (mergekit's tokenizer_source)"""
    dtype: str = "float32"
    """dtype the merge is computed in"""
    seed: int = 0
    """recipe seed of stochastic operators (DARE, DELLA); default: the experiment seed"""
    calibration: Calibration | None = None
    """activation-informed operators (aim_*): {file: text, one sample per line; samples: 256; block_size: 512}, read by the base model once per worker"""

    @model_validator(mode="after")
    def _check(self) -> ParameterSpaceConfig:
        if self.smooth and self.layer_groups < 2:
            raise ValueError(
                "smooth: true needs layer_groups >= 2 (the number of gradient control points)"
            )
        if len(set(self.filters)) != len(self.filters) or any(not f for f in self.filters):
            raise ValueError(f"filters {self.filters} must be distinct non-empty strings")
        for name, (lo, hi) in self.bounds.items():
            if not lo < hi:
                raise ValueError(f"bounds.{name} = [{lo}, {hi}] must have lower < upper")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        return self


class DataflowSpaceConfig(_Frozen):
    """Data-flow space (Sakana DFS): indicator over M*r slots plus input-scaling factors."""

    kind: Literal["dataflow"] = "dataflow"
    """dataflow: genes choose a path of layers from the models, with input scales (Sakana DFS)"""
    repeats: int = Field(3, ge=1)
    """r: the pool of every model's layers is repeated r times (M x r slots)"""
    scales: Literal["full", "per_layer", "none"] = "full"
    """input-scale genes: full ((M+1) x M matrix), per_layer (M) or none"""
    scale_log2_range: float = Field(1.0, gt=0.0, le=8.0)
    """a scale is 2**g with g in [-range, range]"""
    max_path_length: int | None = Field(None, ge=1)
    """longest path in layers (null: twice model A's depth)"""
    # The starting path runs through this source's layers (0 = model A itself, the paper's
    # start). Another start helps when A's layers are the wrong ones and every path between
    # them scores the same (a flat start), e.g. A only lends its embeddings and head.
    start: int = Field(0, ge=0)
    """the starting path runs through this model's layers (0: model A's own path)"""
    residual_writers: list[str] = Field(default_factory=lambda: ["o_proj", "down_proj"])
    """names of the tensors that write into the residual stream (scaled by a gene)"""
    dtype: str = "float32"
    """dtype the merged model is built in"""
    seed: int = 0
    """recipe seed; default: the experiment seed"""

    @model_validator(mode="after")
    def _check(self) -> DataflowSpaceConfig:
        if not self.residual_writers or any(not f for f in self.residual_writers):
            raise ValueError(
                "residual_writers must name the tensors that write into the residual stream, "
                "e.g. [o_proj, down_proj] for Llama/Mistral/Qwen"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        return self


class HybridSpaceConfig(DataflowSpaceConfig):
    """Sakana PS+DFS: data flow over the PS winner (model A) and one source (model B)."""

    kind: Literal["hybrid"] = "hybrid"  # type: ignore[assignment]
    """hybrid: data flow over a parameter-space winner (model A) and one source (model B)"""
    winner: str
    """model A: recipe:<digest>, or the winner's folder or recipe YAML"""
    partner: int | str = 0
    """model B: an index into models, or a model path"""

    @model_validator(mode="after")
    def _winner(self) -> HybridSpaceConfig:
        if not self.winner.strip():
            raise ValueError("winner is empty; give recipe:<digest> or the winner's folder/YAML")
        return self


class FWPoolSpaceConfig(_Frozen):
    """Frank-Wolfe merging's pool space (``evomerge.spaces.fw_pool.FWPoolSpace``): the experiment's
    models are the pool, ``base_model`` is required; pair it with the ``frank_wolfe`` driver."""

    kind: Literal["fw_pool"] = "fw_pool"
    """fw_pool: coefficients of a task-arithmetic merge over the pool (Frank-Wolfe, AdaMerging)"""
    granularity: Literal["layer", "task"] = "layer"
    """layer: one coefficient per tensor and model; task: one per model"""
    variant: Literal["task_arithmetic", "ties", "soft"] = "task_arithmetic"
    """Frank-Wolfe step: task_arithmetic, ties (trimmed step) or soft (FW-Soft)"""
    iterations: int = Field(10, ge=1)
    """Frank-Wolfe iterations"""
    density: float = Field(0.3, gt=0, le=1)
    """ties variant: fraction of each step's entries kept"""
    init: Literal["base", "task_arithmetic"] = "base"
    """starting point: base, or a uniform task_arithmetic merge"""
    init_scale: float = 0.3
    """init task_arithmetic: the uniform coefficient"""


SpaceConfig = Annotated[
    ParameterSpaceConfig | DataflowSpaceConfig | HybridSpaceConfig | FWPoolSpaceConfig,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(SpaceConfig)
_CLASSES: dict[str, type[BaseModel]] = {
    "parameter": ParameterSpaceConfig,
    "dataflow": DataflowSpaceConfig,
    "hybrid": HybridSpaceConfig,
    "fw_pool": FWPoolSpaceConfig,
}
KINDS = tuple(_CLASSES)


def parse_space_config(data: Any, *, origin: str = "space") -> SpaceConfig:
    """Validate a mapping into a SpaceConfig; errors name the field and the fix."""
    if not isinstance(data, dict):
        raise UserInputError(f"{origin}: expected a mapping, got {type(data).__name__}")
    if data.get("kind") not in KINDS:
        raise UserInputError(
            f"{origin}: 'kind' is {data.get('kind')!r}; use one of {', '.join(KINDS)}"
        )
    # Validate with the concrete class (not the union) so error paths read 'repeats', not
    # 'dataflow.repeats'.
    try:
        return _CLASSES[data["kind"]].model_validate(data)
    except ValidationError as err:
        raise UserInputError(format_validation_error(err, origin, _CLASSES[data["kind"]])) from None
