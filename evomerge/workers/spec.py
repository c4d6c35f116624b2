"""WorkerSpec: what a worker needs to build its resident state, and nothing else.

A worker (the serial evaluator's, or each Ray actor) is shipped this small frozen spec, not the
whole experiment config: its fitness, where and in what dtype it merges, its threads, its cache
budget, the seed, and the models it keeps, already resolved to folders (zoo builds and GGUF
conversions happen once, in the builder, before any worker starts). The builder makes one spec
per search (``evomerge.build``); the validation split is the same spec with ``split``
changed. Every field here is read by a worker; a field nobody reads does not belong here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerSpec:
    fitness: Any
    """the experiment's FitnessConfig (tasks, weights, objectives, validation)"""
    base_dir: str
    """the experiment file's folder: the fitness's relative paths resolve from it"""
    seed: int
    """the experiment seed: each job seeds its RNGs from (seed, recipe digest)"""
    tokenizer_model: str
    """the model (a resolved reference) whose tokenizer scores candidates without their own"""
    shared_models: tuple[str, ...]
    """the resolved models each Ray node loads once into its object store"""
    space: Any = None
    """the experiment's SpaceConfig: a wants job (a gradient) is taken over the pool space"""
    base_model: str | None = None
    """the resolved base model (the pool space's task vectors are taken against it)"""
    models: tuple[str, ...] = ()
    """the resolved experts, in the experiment's order"""
    split: str = "search"
    """search, or validation: the held-out items (fitness.validation)"""
    device: str = "cpu"
    """where candidates are merged and scored (a Ray actor's placement overrides it)"""
    dtype: str = "auto"
    """the resident model's dtype; auto: bfloat16 on GPU, float32 on CPU"""
    gpus_per_worker: float = 0.0
    """more than 1: the resident model is split over that many GPUs by layers"""
    cpus_per_worker: float = 1.0
    """Ray: CPU cores reserved per worker (and, unless threads is set, its torch threads)"""
    threads: int | None = None
    """torch threads per worker (None: automatic, evomerge.workers.threads)"""
    stats_cache: float = 1.0
    """the resident statistics cache's budget, as a multiple of the experts' bytes (0: off)"""
    timeout_s: float | None = 600.0
    """a candidate slower than this is recorded FAIL"""
    cache_dtype: str = "float32"
    """dtype of the experts in a node's shared cache (float32: what the merge engine reads)"""

    @property
    def needs_placement(self) -> bool:
        """A GPU, or a dtype other than float32: the resident model is placed, not plain."""
        return self.device != "cpu" or self.dtype not in ("auto", "float32")
