"""The worker factory a search ships to its Ray actors: the experiment config and a resolver.

Each actor builds the same ``ResidentWorker`` the serial evaluator builds (fitness, tokenizer,
materializer), but over the node's shared expert cache and with the resident model placed on
the actor's GPUs (``PlacedMaterializer``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evomerge.workers.job import WorkerContext
from evomerge.workers.ray_actor import WorkerFactory
from evomerge.workers.ray_placement import PlacedMaterializer, Placement


class ConfigWorkerFactory(WorkerFactory):
    def __init__(self, cfg: Any, resolver: Callable[[str], str], split: str = "search") -> None:
        self.cfg = cfg
        self.split = split  # "validation": the actors score held-out items (fitness.validation)
        self.resolver = resolver
        self.cache_dtype = getattr(cfg.evaluation, "cache_dtype", "float32")
        self.stats_ratio = cfg.evaluation.stats_cache

    def shared_models(self) -> list[str]:
        base = self.cfg.resolved_base()
        refs = ([base] if base else []) + [m for m in self.cfg.resolved_models() if m != base]
        # recipe:<digest> sources exist only once materialized; workers read those from disk.
        return [r for r in refs if not r.startswith("recipe:")]

    def build(self, cache: Any, placement: Placement, worker: str) -> WorkerContext:
        from evomerge.workers.context import ResidentWorker

        ev = self.cfg.evaluation.model_copy(update={"device": placement.device})
        cfg = self.cfg.model_copy(update={"evaluation": ev})
        ctx = ResidentWorker(
            cfg, resolver=self.resolver, worker=worker, cache=cache, split=self.split
        )
        ctx.materializer = PlacedMaterializer(
            ctx.cache, placement, merge_fn=getattr(ctx.materializer, "merge_fn", None)
        )
        return ctx
