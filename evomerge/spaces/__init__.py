"""Search spaces: a box of real genes and a deterministic decoder to a Recipe.

``SPACES`` maps a config ``kind`` to its class; ``build_space`` is what the experiment builder
calls. Presets live in ``search_spaces/*.yaml`` (``load_space_preset``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from evomerge.errors import UserInputError
from evomerge.recipe import Recipe
from evomerge.spaces.base import SearchSpace
from evomerge.spaces.config import (
    DataflowSpaceConfig,
    HybridSpaceConfig,
    ParameterSpaceConfig,
    SpaceConfig,
    parse_space_config,
)
from evomerge.spaces.dataflow import DataflowSpace
from evomerge.spaces.hybrid import HybridSpace
from evomerge.spaces.parameter import ParameterSpace, layer_group_ranges
from evomerge.spaces.presets import available_presets, find_preset, load_space_preset


def _parameter(cfg, *, base, models, num_layers):
    if not isinstance(num_layers, int):
        if len(set(num_layers)) != 1:
            depths = ", ".join(f"{m}: {n}" for m, n in zip(models, num_layers, strict=True))
            raise UserInputError(
                f"parameter space: the models have different layer counts ({depths}); it "
                "merges tensors layer by layer, so list fine-tunes of one base model"
            )
        num_layers = num_layers[0]
    return ParameterSpace(cfg, base=base, models=models, num_layers=num_layers)


def _dataflow(cfg, *, base, models, num_layers):
    return DataflowSpace(cfg, models=models, num_layers=num_layers)


def _hybrid(cfg, *, base, models, num_layers, winner=None):
    return HybridSpace(cfg, models=models, num_layers=num_layers, winner=winner)


def _fw_pool(cfg, *, base, models, num_layers):
    from evomerge.spaces.fw_pool import FWPoolSpace

    if base is None:
        raise UserInputError(
            "space kind fw_pool needs base_model: task vectors are taken against it"
        )
    opts = cfg.model_dump(exclude={"kind"})
    return FWPoolSpace(base, models, **opts)


SPACES: dict[str, Callable[..., SearchSpace]] = {
    "parameter": _parameter,
    "dataflow": _dataflow,
    "hybrid": _hybrid,
    "fw_pool": _fw_pool,
}


def build_space(
    cfg: SpaceConfig,
    *,
    base: str | None,
    models: list[str],
    num_layers: int | Sequence[int],
    winner: Recipe | None = None,
) -> SearchSpace:
    """Build the space ``cfg`` describes over ``models`` (``num_layers``: one count for all, or
    one per model; data flow allows different depths). ``winner``: a hybrid space's winner
    recipe, read by the builder (``evomerge.experiment``) so that the space reads no file."""
    try:
        factory = SPACES[cfg.kind]
    except KeyError:
        raise UserInputError(
            f"unknown space kind {cfg.kind!r}; valid: {', '.join(SPACES)}"
        ) from None
    extra = {"winner": winner} if winner is not None else {}
    return factory(cfg, base=base, models=list(models), num_layers=num_layers, **extra)


__all__ = [
    "SPACES",
    "DataflowSpace",
    "DataflowSpaceConfig",
    "HybridSpace",
    "HybridSpaceConfig",
    "ParameterSpace",
    "ParameterSpaceConfig",
    "SearchSpace",
    "SpaceConfig",
    "available_presets",
    "build_space",
    "find_preset",
    "layer_group_ranges",
    "load_space_preset",
    "parse_space_config",
]
