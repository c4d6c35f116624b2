"""The operator registry (a plain dict) and the per-tensor random generator."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from evomerge.errors import UserInputError


@dataclass(frozen=True)
class OpSpec:
    name: str
    fn: Callable[..., torch.Tensor]
    needs_base: bool
    per_model_params: tuple[str, ...] = ()
    global_params: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False
    paper: str = ""
    mergekit_name: str | None = None
    min_models: int = 1
    max_models: int | None = None
    param_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the operator reads the base model's activations on the recipe's calibration data: the
    # planner passes each tensor's statistics as ``activation`` (evomerge.merge.calibration; AIM)
    needs_activations: bool = False

    @property
    def required(self) -> tuple[str, ...]:
        """Parameters with no default: the recipe must give them."""
        return tuple(
            p for p in self.per_model_params + self.global_params if p not in self.defaults
        )

    @property
    def params(self) -> tuple[str, ...]:
        return self.per_model_params + self.global_params


OPS: dict[str, OpSpec] = {}


def register_op(
    name: str, **spec: Any
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: ``@register_op("ties", needs_base=True, per_model_params=(...), ...)``."""

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in OPS:
            raise ValueError(f"operator {name!r} registered twice")
        OPS[name] = OpSpec(name=name, fn=fn, **spec)
        return fn

    return wrap


def get_op(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        from evomerge.config_keys import valid_names

        raise UserInputError(
            f"merge_method: unknown operator {name!r}; {valid_names(str(name), sorted(OPS))}"
        ) from None


def list_ops() -> list[str]:
    return sorted(OPS)


def generator_for(seed: int, tensor_name: str) -> torch.Generator:
    """A CPU generator seeded from (recipe seed, tensor name): independent of processing order."""
    digest = hashlib.sha256(f"{seed}\x00{tensor_name}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def per_model(params: dict[str, Any], key: str, n: int) -> list[float]:
    """A per-model parameter as a list of ``n`` floats (a scalar is broadcast)."""
    v = params[key]
    vals = list(v) if isinstance(v, (list, tuple)) else [v] * n
    if len(vals) != n:
        raise UserInputError(f"parameter {key!r}: got {len(vals)} values for {n} models")
    return [float(x) for x in vals]


def bernoulli_mask(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Bernoulli draws made on the CPU (same bits on any device), moved to ``probs``' device."""
    if generator is None:
        raise UserInputError("a stochastic operator needs a generator (recipe seed)")
    mask = torch.bernoulli(probs.detach().float().cpu(), generator=generator)
    return mask.to(device=probs.device, dtype=probs.dtype)
