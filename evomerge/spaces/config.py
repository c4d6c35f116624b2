"""Search-space configuration: what a ``search_spaces/*.yaml`` preset (or the ``space:`` block of
an experiment) may say. Frozen pydantic models, unknown keys rejected, discriminated by ``kind``.

YAML shapes (every key but ``kind`` is optional)::

    kind: parameter            # Sakana PS: genes per model x layer group x filter x param
    merge_method: dare_ties    # any registered operator (evomerge.ops)
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
from evomerge.recipe import DTYPES, ParamValue, format_validation_error


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParameterSpaceConfig(_Frozen):
    """Parameter space (Sakana PS, mergekit-evolve's genome, generalized to every operator)."""

    kind: Literal["parameter"] = "parameter"
    merge_method: str = "dare_ties"
    layer_groups: int = Field(1, ge=1)
    smooth: bool = False
    filters: list[str] = Field(default_factory=list)
    params: list[str] | None = None
    global_params: list[str] = Field(default_factory=list)
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    x0: dict[str, float] = Field(default_factory=dict)
    log_scale: list[str] = Field(default_factory=list)
    fixed: dict[str, ParamValue] = Field(default_factory=dict)
    # experts whose tokenizers differ: base | union | the index of one of the experiment's
    # models (or its path); each recipe carries it (mergekit's tokenizer_source)
    tokenizer_source: str | int | None = None
    dtype: str = "float32"
    seed: int = 0

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
    repeats: int = Field(3, ge=1)
    scales: Literal["full", "per_layer", "none"] = "full"
    scale_log2_range: float = Field(1.0, gt=0.0, le=8.0)
    max_path_length: int | None = Field(None, ge=1)
    # The starting path runs through this source's layers (0 = model A itself, the paper's
    # start). Another start helps when A's layers are the wrong ones and every path between
    # them scores the same (a flat start), e.g. A only lends its embeddings and head.
    start: int = Field(0, ge=0)
    residual_writers: list[str] = Field(default_factory=lambda: ["o_proj", "down_proj"])
    dtype: str = "float32"
    seed: int = 0

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
    winner: str
    partner: int | str = 0

    @model_validator(mode="after")
    def _winner(self) -> HybridSpaceConfig:
        if not self.winner.strip():
            raise ValueError("winner is empty; give recipe:<digest> or the winner's folder/YAML")
        return self


class FWPoolSpaceConfig(_Frozen):
    """Frank-Wolfe merging's pool space (``evomerge.fw.space.FWPoolSpace``): the experiment's
    models are the pool, ``base_model`` is required; pair it with the ``frank_wolfe`` driver."""

    kind: Literal["fw_pool"] = "fw_pool"
    granularity: Literal["layer", "task"] = "layer"
    variant: Literal["task_arithmetic", "ties", "soft"] = "task_arithmetic"
    iterations: int = Field(10, ge=1)
    density: float = Field(0.3, gt=0, le=1)
    init: Literal["base", "task_arithmetic"] = "base"
    init_scale: float = 0.3


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
        raise UserInputError(format_validation_error(err, origin)) from None
