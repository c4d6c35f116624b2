"""The one place the workers call the merge engine (``evomerge.merge.engine``).

Two calls: the merged tensors of a recipe read from an in-memory ``ExpertCache`` (the in-place
path), and a HF folder written to disk (the archive and export path). Keeping them here means
the materializer does not depend on the engine's internal layout.

The in-place path offers the engine's ``compute`` two things the disk path has no use for:
the cache's ``ResidentCache`` view of the tensor (sorted |τ|, uniform draws: see
``evomerge.merge.ops._fast.resident_cache``), and ``out``, the resident model's parameter, which the
fast path may fill directly (linear, the task-arithmetic family). Neither changes a bit of the
result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from evomerge.recipe import Recipe


def _engine() -> Any:
    from evomerge.merge import engine

    return engine


Dest = Callable[[str], "torch.Tensor | None"]


def merged_tensors(
    recipe: Recipe, cache: Any, dest: Dest | None = None
) -> tuple[Any, Iterator[tuple[str, torch.Tensor]]]:
    """(output model config, iterator of (tensor name, merged tensor)) with every source tensor
    read from ``cache`` instead of the disk. ``dest(name)``: the tensor the result may be written
    into (the iterator then yields that very tensor, whose writing may go on until the
    iteration ends), or None."""
    engine = _engine()
    plan = engine.plan(recipe, resolver=cache.resolver, source=cache)
    return _shared_config(plan), _iter_tensors(engine, plan, cache, dest)


_CONFIGS: dict[str, Any] = {}


def _shared_config(plan: Any) -> Any:
    """The plan's transformers config, one object for equal configs: a search's candidates
    mostly share one, and building it (and the materializer's check of it) costs ~2 ms each.
    Callers must not modify it."""
    key = json.dumps(plan.config_dict, sort_keys=True, default=str)
    hit = _CONFIGS.get(key)
    if hit is None:
        if len(_CONFIGS) >= 64:  # (data-flow searches vary the depth: bounded)
            _CONFIGS.clear()
        hit = _CONFIGS[key] = plan.config
    return hit


def _iter_tensors(
    engine: Any, plan: Any, cache: Any, dest: Dest | None
) -> Iterator[tuple[str, torch.Tensor]]:
    from evomerge.merge.ops import _fast

    stats = getattr(cache, "stats", None)
    if stats is not None:
        stats.begin_candidate()
    seed = plan.recipe.seed
    # The fused kernel writing tensor i into its resident parameter overlaps the Python of
    # tensor i + 1 (_fast.deferred). A value written elsewhere is finished before it is
    # handed over (the consumer reads it), the rest when the iteration ends or is closed.
    try:
        for task in plan.tasks:
            # The cache checked every expert tensor for NaN/Inf once, when it loaded it:
            # re-checking all inputs for every candidate would add a pass over the experts.
            inputs = _load(engine, task, cache, stats)
            with torch.no_grad(), _fast.deferred():
                value = _compute(engine, task, inputs, seed, stats, dest)
            target = dest(task.name) if dest is not None else None
            if target is None or target.data_ptr() != value.data_ptr():
                _fast.finish()
            yield task.name, value
    finally:
        _fast.finish()


def _load(engine: Any, task: Any, cache: Any, stats: Any) -> Any:
    """A task's inputs. Rows realigned to a merged vocabulary (``task.vocab``) are the same for
    every candidate: the resident cache keeps them, stacked, within its budget."""
    if task.vocab is None or stats is None:
        return engine.load_inputs(task, cache, check=False)

    def stacked() -> torch.Tensor:
        tensors, base = engine.load_inputs(task, cache, check=False)
        return torch.stack([*tensors, *([base] if base is not None else [])])

    rows = stats.get(("vocab_rows", task.vocab.key, task.inputs, task.base), stacked)
    n = len(task.inputs)
    return list(rows[:n].unbind(0)), rows[n] if task.base else None


def _compute(
    engine: Any, task: Any, inputs: Any, seed: int, stats: Any, dest: Dest | None
) -> torch.Tensor:
    resident = None
    # (rows realigned to a merged vocabulary are not the cache's tensors: no resident view)
    if stats is not None and task.vocab is None:
        resident = lambda: stats.for_task(task, seed)  # noqa: E731
    out = dest(task.name) if dest is not None else None
    return engine.compute(task, inputs, seed=seed, resident=resident, out=out)


def write_model(recipe: Recipe, out_dir: Path, resolver: Callable[[str], str]) -> Path:
    engine = _engine()
    engine.run_merge(recipe, out_dir, resolver=resolver)
    return out_dir
