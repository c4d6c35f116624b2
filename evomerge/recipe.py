"""Recipe: a frozen, self-contained description of one merged model.

The shape deliberately mirrors mergekit's YAML (``merge_method``, ``base_model``, ``models`` or
``slices``, ``parameters``, ``dtype``, ``tokenizer_source``) so that a mergekit config *is* a
recipe and a recipe exports to mergekit wherever mergekit can express it. evomerge adds
``seed`` (stochastic operators draw from generators seeded by (seed, tensor name), so the same
recipe gives the same bits on any worker) and ``sources`` referencing other recipes by digest
(``recipe:<sha256>``) for merges of merges.

A parameter value is a scalar, a list (a gradient interpolated over layer depth) or a list of
``{filter, value}`` rules matched against tensor names — mergekit's semantics. A ``weight`` may
also be a weight rule (``{rule: varm}``, ``{rule: mwa, ...}``), which planning replaces by
explicit per-tensor filter rules (``evomerge.merge.weight_rules.resolve_weight_rules``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evomerge.config_keys import unknown_key_hint
from evomerge.errors import UserInputError
from evomerge.io.yaml_read import read_yaml
from evomerge.vocab.config import TokenizerConfig

RECIPE_REF_PREFIX = "recipe:"
DTYPES = ("float32", "float16", "bfloat16")

Scalar = bool | float


class FilterRule(BaseModel):
    """Applies ``value`` to tensors whose name contains ``filter`` (None matches every tensor)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    filter: str | None = None
    value: Scalar | list[float]


class WeightRule(BaseModel):
    """A weight computed from the models when the recipe is planned (``evomerge.merge.weight_rules``):
    ``{rule: varm}`` (FuseChat's variation ratio) or ``{rule: mwa, metric: loss|step,
    values: [...] (global) or value: x (per model), penalty: p}`` (metrics-weighted averaging)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    rule: Literal["varm", "mwa"]
    metric: Literal["loss", "step"] | None = None
    values: list[float] | None = None
    value: float | None = None
    penalty: float = 1.0


ParamValue = Scalar | list[float] | list[FilterRule] | WeightRule
Params = dict[str, ParamValue]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelRef(_Frozen):
    """One source model and its per-model parameters (mergekit's ``models`` entry)."""

    model: str
    parameters: Params = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model path is empty; give a local HF model folder or recipe:<digest>")
        return v


class SliceSource(_Frozen):
    """A contiguous layer range [start, end) of one model (mergekit's slice source)."""

    model: str
    layer_range: tuple[int, int]
    parameters: Params = Field(default_factory=dict)

    @field_validator("layer_range")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 0 or v[1] <= v[0]:
            raise ValueError(f"layer_range {list(v)} must be [start, end) with 0 <= start < end")
        return v


class Slice(_Frozen):
    """One run of output layers: its sources' ranges (equal lengths) are merged layer by layer."""

    sources: list[SliceSource]
    parameters: Params = Field(default_factory=dict)

    @model_validator(mode="after")
    def _same_lengths(self) -> Slice:
        lengths = {s.layer_range[1] - s.layer_range[0] for s in self.sources}
        if not self.sources:
            raise ValueError("a slice needs at least one source")
        if len(lengths) > 1:
            raise ValueError(f"slice sources have different layer counts {sorted(lengths)}")
        return self


class Calibration(_Frozen):
    """Text the base model reads once so that activation-informed operators (AIM) know which of
    its input channels matter: ``file`` holds one sample per line; as the AIM authors' code,
    the first ``samples`` lines of at most ``block_size`` tokens are concatenated and cut into
    blocks of ``block_size`` tokens (evomerge.merge.calibration)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
    file: str
    """text file of calibration samples, one per line (e.g. fitness/calibration/lm-skills.txt)"""
    samples: int = Field(256, ge=1)
    """how many lines the base model reads (the AIM authors: 256)"""
    block_size: int = Field(512, ge=1)
    """tokens per forward block; at most the base's positions (the AIM authors: 512)"""


class Recipe(_Frozen):
    """One merged model. ``digest()`` identifies it (candidate id, cache key, archive name)."""

    merge_method: str
    models: list[ModelRef] | None = None
    slices: list[Slice] | None = None
    base_model: str | None = None
    parameters: Params = Field(default_factory=dict)
    dtype: str = "float32"
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerConfig | None = None  # mergekit's block (source, tokens, padding)
    seed: int = 0
    calibration: Calibration | None = None  # activation-informed operators (AIM) only

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _known_dtype(cls, v: str | None) -> str | None:
        if v is not None and v not in DTYPES:
            raise ValueError(f"unknown dtype {v!r}; use one of {', '.join(DTYPES)}")
        return v

    @model_validator(mode="after")
    def _one_layout(self) -> Recipe:
        if (self.models is None) == (self.slices is None):
            raise ValueError("give exactly one of 'models' or 'slices'")
        if self.models is not None and not self.models:
            raise ValueError("'models' is empty; list at least one model")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError(
                "give tokenizer_source or a tokenizer block, not both (tokenizer.source says "
                "the same as tokenizer_source)"
            )
        return self

    def tokenizer_config(self) -> TokenizerConfig | None:
        """The output vocabulary's settings (None: every model's vocabulary must be the same)."""
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_source is not None:
            return TokenizerConfig(source=self.tokenizer_source)
        return None

    # ---- identity -------------------------------------------------------------------------
    def canonical_json(self) -> str:
        """Sorted-key JSON of every field (defaults included): the digest's preimage. An absent
        ``tokenizer`` or ``calibration`` block is left out, so recipes written before they
        existed keep their digest."""
        data = self.model_dump(mode="json")
        for key in ("tokenizer", "calibration"):
            if data.get(key) is None:
                data.pop(key, None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def source_paths(self) -> list[str]:
        """Every distinct model reference, base first, in first-appearance order."""
        seen: dict[str, None] = {}
        if self.base_model:
            seen[self.base_model] = None
        for m in self.models or []:
            seen.setdefault(m.model, None)
        for s in self.slices or []:
            for src in s.sources:
                seen.setdefault(src.model, None)
        return list(seen)

    # ---- YAML -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, *, origin: str = "recipe") -> Recipe:
        if not isinstance(data, dict):
            raise UserInputError(
                f"{origin}: expected a mapping at the top level, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise UserInputError(format_validation_error(err, origin, cls)) from None

    @classmethod
    def from_yaml(cls, text: str, *, origin: str = "recipe") -> Recipe:
        return cls.from_dict(read_yaml(text, origin), origin=origin)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        p = Path(path)
        if not p.is_file():
            raise UserInputError(f"{p}: recipe file not found")
        return cls.from_yaml(p.read_text(), origin=str(p))


def format_validation_error(
    err: ValidationError, origin: str, model: type[BaseModel] | None = None
) -> str:
    """One line per problem, each naming the field path and what to do; ``model``, the class
    validated, lets an unknown key's line name the keys valid there."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            hint = unknown_key_hint(model, e["loc"])
            lines.append(f"{origin}: unknown key '{loc}' — {hint}")
        elif e["type"] == "missing":
            lines.append(f"{origin}: missing required field '{loc}'")
        else:
            where = f"field '{loc}': " if loc else ""  # a whole-model check names its fields
            lines.append(f"{origin}: {where}{_message(e)}")
    return "\n".join(lines)


def _message(e: Any) -> str:
    """pydantic's text, without the "Value error, " it puts before a validator's own message."""
    if e["type"] == "value_error" and "error" in e.get("ctx", {}):
        return str(e["ctx"]["error"])
    return e["msg"]
