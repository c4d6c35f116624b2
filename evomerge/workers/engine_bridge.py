"""The one place the workers call the merge engine (``evomerge.merge``).

Two calls: the merged tensors of a recipe read from an in-memory ``ExpertCache`` (the in-place
path), and a HF folder written to disk (the archive and export path). Keeping them here means
the materializer does not depend on the engine's internal layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from evomerge.recipe import Recipe


def _engine() -> Any:
    from evomerge import merge

    return merge


def merged_tensors(recipe: Recipe, cache: Any) -> tuple[Any, Iterator[tuple[str, torch.Tensor]]]:
    """(output model config, iterator of (tensor name, merged tensor)) with every source tensor
    read from ``cache`` instead of the disk."""
    engine = _engine()
    plan = engine.plan(recipe, resolver=cache.resolver, source=cache)
    # The cache checked every expert tensor for NaN/Inf once, when it loaded it: re-checking
    # all inputs for every candidate would add a full pass over the experts' bytes.
    return plan.config, engine.iter_merged_tensors(plan, source=cache, check=False)


def write_model(recipe: Recipe, out_dir: Path, resolver: Callable[[str], str]) -> Path:
    engine = _engine()
    engine.run_merge(recipe, out_dir, resolver=resolver)
    return out_dir
