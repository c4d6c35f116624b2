"""One Ray worker: a resident model, experts mapped from its node's object store, a scratch dir.

The actor is created with ``max_restarts`` so Ray restarts it after its process dies; its
constructor then runs again with the same arguments and the worker rebuilds its state lazily on
the next candidate (the experts are still in the node's object store, owned by the evaluator).
Each candidate goes through ``run_job``, the job function the serial evaluator uses, so a bad
candidate is a FAIL result, never an exception. The actor has one thread (``run_job``'s SIGALRM
timeout needs the main thread); the evaluator enforces a second, hard timeout by killing it.

Scratch: every worker owns ``<scratch_root>/<worker name>``; it is wiped when the worker starts
(a crashed predecessor may have left files), each candidate gets a fresh subfolder (TMPDIR
points there while the candidate runs), and the folder is removed on shutdown.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evomerge.recipe import Recipe
from evomerge.results import JobResult
from evomerge.workers.job import WorkerContext, run_job, run_wants_job
from evomerge.workers.materialize import Resolver
from evomerge.workers.ray_placement import Placement, placement_for


class WorkerFactory(ABC):
    """Builds a worker's resident state inside the actor (must pickle; shipped to every actor)."""

    resolver: Resolver | None = None
    cache_dtype: str = "float32"
    stats_ratio: float = 1.0  # each worker's statistics cache, x the experts' bytes (0: off)

    @abstractmethod
    def shared_models(self) -> list[str]:
        """Model references to put once per node into the object store."""

    def can_use_split(self) -> bool:
        """Whether the contexts ``build`` makes have ``use_split`` (switch to other items)."""
        return False

    @abstractmethod
    def build(self, cache: Any, placement: Placement, worker: str) -> WorkerContext:
        """The worker context (materializer + fitness) over ``cache``, placed per ``placement``."""


class EvalWorker:
    """The actor class (wrapped with ``ray.remote`` by the evaluator)."""

    def __init__(
        self,
        factory: WorkerFactory,
        name: str,
        scratch_root: str,
        num_gpus: float = 0.0,
        dtype: str = "auto",
        num_cpus: float = 1.0,
        threads: int | None = None,
    ) -> None:
        from evomerge.workers import threads as _threads

        # first thing in the actor's process: never more torch threads than CPUs Ray reserved
        _threads.apply(_threads.choose_ray(threads, num_cpus))
        self.factory, self.name = factory, name
        self.placement = placement_for(num_gpus, dtype)
        self.scratch = Path(scratch_root) / name
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.ctx: WorkerContext | None = None
        self.cache: Any = None
        self._setup_error: str | None = None

    # ---- introspection (cheap; also used to wait for a restarted actor) ---------------------
    def info(self) -> dict[str, Any]:
        import ray

        rt = ray.get_runtime_context()
        return {
            "name": self.name,
            "pid": os.getpid(),
            "node_id": rt.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "placement": self.placement.to_dict(),
            "scratch": str(self.scratch),
        }

    def warmup(self, node_refs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """Build the resident state now (maps the experts, builds the model lazily on the first
        candidate) so the first candidate's time does not include it; never raises."""
        self._context(node_refs)
        return {**self.info(), "setup_error": self._setup_error}

    def describe(self) -> dict[str, Any]:
        """What the worker holds: for tests, benchmarks and the GPU check."""
        out = self.info()
        out.update(memory_of_process())
        import torch

        out["torch_threads"] = torch.get_num_threads()
        out["interop_threads"] = torch.get_num_interop_threads()
        out["built"] = self.ctx is not None
        out["setup_error"] = self._setup_error
        cache = self.cache
        out["shared_bytes"] = getattr(cache, "shared_nbytes", 0) if cache is not None else 0
        mat = getattr(self.ctx, "materializer", None)
        out["device_map"] = mat.device_map() if hasattr(mat, "device_map") else {}
        return out

    # ---- the per-candidate path ---------------------------------------------------------------
    def run(
        self,
        recipe: Recipe,
        node_refs: Mapping[str, Mapping[str, Any]],
        timeout_s: float | None,
        wants: Mapping[str, Any] | None = None,
        items: dict[str, list[int]] | None = None,
        split: str | None = None,
    ) -> JobResult:
        """The candidate's fitness job, or with ``wants`` its wants job (``workers.wants``);
        ``split`` (the evaluator's ``use_split``): the items to score, when not the spec's.
        The split comes with every job, so a restarted actor scores the same items."""
        ctx = self._context(node_refs)
        if ctx is None:
            return JobResult.failed(
                recipe.digest(), self._setup_error or "setup failed", worker=self.name
            )
        if split is not None:
            ctx.use_split(split)  # type: ignore[attr-defined]  (checked by the evaluator)
        job_dir = Path(tempfile.mkdtemp(prefix="cand-", dir=self.scratch))
        old_tmp = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = str(job_dir)
        tempfile.tempdir = None  # re-read TMPDIR
        try:
            if wants:
                return run_wants_job(ctx, recipe, wants, timeout_s=timeout_s)
            return run_job(ctx, recipe, timeout_s=timeout_s, items=items)
        finally:
            if old_tmp is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = old_tmp
            tempfile.tempdir = None
            shutil.rmtree(job_dir, ignore_errors=True)

    def shutdown(self) -> bool:
        ctx, self.ctx, self.cache = self.ctx, None, None
        if ctx is not None and hasattr(ctx, "close"):
            ctx.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        try:
            self.scratch.parent.rmdir()  # the run's scratch root, once its last worker is gone
        except OSError:
            pass
        return True

    def _context(self, node_refs: Mapping[str, Mapping[str, Any]]) -> WorkerContext | None:
        if self.ctx is not None or self._setup_error is not None:
            return self.ctx
        try:
            self.cache = self._cache(node_refs)
            self.ctx = self.factory.build(self.cache, self.placement, self.name)
        except Exception as err:  # noqa: BLE001 - reported as each candidate's FAIL
            self._setup_error = f"worker {self.name} setup failed: {type(err).__name__}: {err}"
        return self.ctx

    def _cache(self, node_refs: Mapping[str, Mapping[str, Any]]) -> Any:
        import ray
        import torch

        from evomerge.workers.ray_cache import SharedExpertCache, put_on_nodes

        node = ray.get_runtime_context().get_node_id()
        refs = node_refs.get(node)
        models = self.factory.shared_models()
        if refs is None and models:
            # Restarted on a node the evaluator has not loaded (its node died): load here; the
            # object is then owned by this actor and shared only with its own restarts' callers.
            refs = put_on_nodes(
                ray, [node], models, self.factory.resolver, self.factory.cache_dtype
            )[node]
        names = list(refs or {})
        packed = dict(zip(names, ray.get([refs[n] for n in names]), strict=True)) if names else {}
        ratio = self.factory.stats_ratio  # a private cache per worker
        return SharedExpertCache(
            self.factory.resolver,
            packed,
            dtype=getattr(torch, self.factory.cache_dtype),
            stats=ratio > 0,
            stats_ratio=ratio,
        )


def memory_of_process() -> dict[str, int]:
    """This process's memory in bytes: rss (shared object-store pages it touched included),
    pss (shared pages divided among the processes mapping them) and private (its own pages):
    per-worker copies of the experts show up in ``private``, a shared cache does not."""
    out = {"rss_bytes": 0, "pss_bytes": 0, "private_bytes": 0}
    keys = {
        "Rss": "rss_bytes",
        "Pss": "pss_bytes",
        "Private_Clean": "private_bytes",
        "Private_Dirty": "private_bytes",
    }
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                field, _, rest = line.partition(":")
                if field in keys:
                    out[keys[field]] += int(rest.split()[0]) * 1024
    except OSError:  # not Linux: ru_maxrss is the best we have
        import resource

        out["rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return out
    # RssAnon holds private copies (heap); RssShmem the object store pages this worker maps
    status = {"RssAnon": "anon_bytes", "RssFile": "file_bytes", "RssShmem": "shmem_bytes"}
    with open("/proc/self/status") as f:
        for line in f:
            field, _, rest = line.partition(":")
            if field in status:
                out[status[field]] = int(rest.split()[0]) * 1024
    return out
