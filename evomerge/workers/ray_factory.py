"""The worker factory a search ships to its Ray actors: a ``WorkerSpec`` and a resolver.

Each actor builds the same ``ResidentWorker`` the serial evaluator builds (fitness, tokenizer,
materializer), but over the node's shared expert cache and with the resident model placed on
the actor's GPUs (``PlacedMaterializer``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from evomerge.workers.job import WorkerContext
from evomerge.workers.ray_actor import WorkerFactory
from evomerge.workers.ray_placement import PlacedMaterializer, Placement
from evomerge.workers.spec import WorkerSpec


class SpecWorkerFactory(WorkerFactory):
    def __init__(self, spec: WorkerSpec, resolver: Callable[[str], str]) -> None:
        self.spec = spec
        self.resolver = resolver
        self.cache_dtype = spec.cache_dtype
        self.stats_ratio = spec.stats_cache

    def shared_models(self) -> list[str]:
        # recipe:<digest> sources exist only once materialized; workers read those from disk.
        return [r for r in self.spec.shared_models if not r.startswith("recipe:")]

    def can_use_split(self) -> bool:
        return True  # ResidentWorker.use_split

    def build(self, cache: Any, placement: Placement, worker: str) -> WorkerContext:
        from evomerge.workers.context import ResidentWorker

        spec = dataclasses.replace(self.spec, device=placement.device)
        ctx = ResidentWorker(spec, resolver=self.resolver, worker=worker, cache=cache)
        ctx.materializer = PlacedMaterializer(
            ctx.cache, placement, merge_fn=getattr(ctx.materializer, "merge_fn", None)
        )
        return ctx
