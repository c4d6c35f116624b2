"""RayEvaluator: candidates scored by Ray actors, each with a resident model, locally or on a
cluster; experts shared per node; lost workers re-queued; hard per-candidate timeouts.

Scheduling is a work queue, not a generation barrier: every worker takes the next queued
candidate the moment it is free, and ``submit``/``poll`` let a loop feed candidates of the next
batch while the last ones of this batch still run (drivers that can ask ahead). ``evaluate``
and the ordered stream both hand results back in submission (= ask) order, so what the driver
and the store see never depends on which worker finished first.

Affinity (racing): a worker whose resident model holds a candidate (the digest of the last
fitness job it ran) takes that candidate's next queued job first, and no free worker takes a
job whose candidate is resident on another worker while other jobs wait: racing submits a
candidate's slices as separate jobs, and a job landing where its candidate is resident merges
nothing (``Materializer.materialize``). Which worker runs a job changes no score.

Faults: each actor has ``max_restarts``; when its process dies, its candidate goes back to the
front of the queue (up to ``max_retries`` times, then FAIL) and the restarted actor rebuilds its
state from the experts still held in its node's object store. A result is accepted once per
ticket, and only the loop writes the store, so a candidate is never scored twice into it. A
candidate that outlives ``timeout_s`` (plus a grace for the job's own SIGALRM timeout) has its
actor killed and restarted: hung C code cannot block the search.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evomerge.recipe import Recipe
from evomerge.workers.base import Evaluator, JobResult
from evomerge.workers.ray_actor import EvalWorker, WorkerFactory
from evomerge.workers.ray_cache import put_on_nodes
from evomerge.workers.ray_cluster import cluster_capacity, connect
from evomerge.workers.spec import WorkerSpec


@dataclass
class _Slot:
    name: str
    actor: Any
    warm_ref: Any = None  # pending warm-up (start / restart); None once ready
    info: dict[str, Any] = field(default_factory=dict)
    ticket: int | None = None
    run_ref: Any = None
    started: float = 0.0
    warm_failures: int = 0
    resident: str | None = None  # digest of the candidate its model last merged, if known


@dataclass
class RayStats:
    submitted: int = 0
    completed: int = 0
    requeued: int = 0
    worker_deaths: int = 0
    hard_timeouts: int = 0
    per_worker: dict[str, int] = field(default_factory=dict)


class RayEvaluator(Evaluator):
    def __init__(
        self,
        factory: WorkerFactory,
        *,
        num_workers: int | None = None,
        address: str | None = None,
        num_cpus_per_worker: float = 1.0,
        num_gpus_per_worker: float = 0.0,
        dtype: str = "auto",
        threads: int | None = None,
        timeout_s: float | None = None,
        grace_s: float = 30.0,
        max_retries: int = 2,
        scratch_root: str | None = None,
        object_store_memory: int | None = None,
        on_result: Callable[[JobResult], None] | None = None,
    ) -> None:
        local_cpus = (num_workers or 1) * num_cpus_per_worker if not address else None
        self.ray, self._owned = connect(
            address, num_cpus=local_cpus, object_store_memory=object_store_memory
        )
        self.factory, self.timeout_s, self.grace_s = factory, timeout_s, grace_s
        self.max_retries, self.on_result = max_retries, on_result
        n = num_workers or cluster_capacity(self.ray, num_cpus_per_worker, num_gpus_per_worker)
        self.num_workers = max(1, n)
        # always a fresh folder of our own below the root: close() removes it recursively
        root = scratch_root or tempfile.gettempdir()
        self._scratch = f"{root}/evomerge-scratch-{uuid.uuid4().hex[:8]}"
        self._actor_cls = self.ray.remote(EvalWorker).options(
            num_cpus=num_cpus_per_worker,
            num_gpus=num_gpus_per_worker,
            max_restarts=-1,
            max_task_retries=0,  # we re-queue ourselves, so a retry is counted and bounded
            scheduling_strategy="SPREAD",
        )
        self._actor_args = (
            factory,
            self._scratch,
            num_gpus_per_worker,
            dtype,
            num_cpus_per_worker,
            threads,
        )
        self._tag, self._replaced = uuid.uuid4().hex[:6], 0
        self._slots = [self._new_slot(i) for i in range(self.num_workers)]
        self._node_refs = self._load_experts()
        for s in self._slots:
            s.warm_ref = s.actor.warmup.remote(self._node_refs)
        self._queue: deque[int] = deque()
        self._items: dict[int, dict[str, list[int]]] = {}  # racing: the items a ticket scores
        self._recipes: dict[int, Recipe] = {}
        self._digests: dict[int, str] = {}  # fitness jobs: the recipe's digest (affinity)
        self._wants: dict[int, Mapping[str, Any]] = {}
        self._attempts: dict[int, int] = {}
        self._done: dict[int, JobResult] = {}
        self._next_ticket = 0
        self._split: str | None = None  # use_split's, sent with every job
        self.stats = RayStats()

    @classmethod
    def from_spec(
        cls,
        spec: WorkerSpec,
        resolver: Callable[[str], str],
        *,
        workers: int | None,
        address: str | None = None,
    ) -> RayEvaluator:
        """``workers`` actors (None: as many as the cluster at ``address`` has room for), each
        building its worker from ``spec``."""
        from evomerge.workers.ray_factory import SpecWorkerFactory

        return cls(
            SpecWorkerFactory(spec, resolver),
            num_workers=workers,
            address=address,
            num_cpus_per_worker=spec.cpus_per_worker,
            num_gpus_per_worker=spec.gpus_per_worker,
            dtype=spec.dtype,
            threads=spec.threads,
            timeout_s=spec.timeout_s,
        )

    # ---- start-up ---------------------------------------------------------------------------
    def _new_slot(self, i: int | str) -> _Slot:
        name = f"ray-{self._tag}-w{i}"
        actor = self._actor_cls.remote(self.factory, name, *self._actor_args[1:])
        return _Slot(name=name, actor=actor)

    def _load_experts(self) -> dict[str, dict[str, Any]]:
        """Place the experts once per node that hosts a worker (workers report their node)."""
        infos = self.ray.get([s.actor.info.remote() for s in self._slots])
        for s, info in zip(self._slots, infos, strict=True):
            s.info = info
        nodes = sorted({i["node_id"] for i in infos})
        models = self.factory.shared_models()
        if not models:
            return {}
        return put_on_nodes(
            self.ray, nodes, models, self.factory.resolver, self.factory.cache_dtype
        )

    # ---- streaming interface ----------------------------------------------------------------
    def submit(
        self,
        recipe: Recipe,
        wants: Mapping[str, Any] | None = None,
        items: dict[str, list[int]] | None = None,
    ) -> int:
        """Queue one candidate (with ``wants``: its wants job instead of its fitness job,
        ``workers.wants``; with ``items``: only those item positions, racing); returns its
        ticket (tickets count up in submission order)."""
        t = self._enqueue(recipe, wants, items)
        self._pump()
        return t

    def _enqueue(
        self,
        recipe: Recipe,
        wants: Mapping[str, Any] | None = None,
        items: dict[str, list[int]] | None = None,
    ) -> int:
        t = self._next_ticket
        self._next_ticket += 1
        self._recipes[t] = recipe
        if wants:
            self._wants[t] = wants
        else:
            self._digests[t] = recipe.digest()
        if items is not None:
            self._items[t] = items
        self._attempts[t] = 0
        self._queue.append(t)
        self.stats.submitted += 1
        return t

    @property
    def in_flight(self) -> int:
        """Submitted and not yet returned by ``poll``."""
        return len(self._recipes) + len(self._done)

    def poll(self, timeout: float | None = None) -> list[tuple[int, JobResult]]:
        """Wait up to ``timeout`` seconds (None: until something finishes) and return the
        finished (ticket, result) pairs in completion order."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._pump()
            if self._done:
                done, self._done = self._done, {}
                return list(done.items())
            if not self._recipes:
                return []
            wait = self._wait_budget(deadline)
            if wait is not None and wait <= 0:
                return []
            self._step(wait)

    def evaluate(
        self, recipes: Sequence[Recipe], items: Sequence[dict[str, list[int]]] | None = None
    ) -> list[JobResult]:
        return self._batch(
            self._enqueue(r, items=None if items is None else items[i])
            for i, r in enumerate(recipes)
        )

    def evaluate_wants(
        self, recipes: Sequence[Recipe], wants: Sequence[Mapping[str, Any]]
    ) -> list[JobResult]:
        return self._batch(self._enqueue(r, w) for r, w in zip(recipes, wants, strict=True))

    def _batch(self, enqueued: Iterable[int]) -> list[JobResult]:
        """Results of the jobs ``enqueued`` yields, in their order. The whole batch is queued
        before any worker takes a job: a free worker whose resident candidate comes late in
        the batch still finds it (affinity), instead of taking the first job because its own
        was not queued yet."""
        tickets = list(enqueued)
        self._pump()
        return self._collect(tickets)

    def _collect(self, tickets: list[int]) -> list[JobResult]:
        """Wait for ``tickets``; results of other tickets (a batch submitted ahead) stay for
        the next ``poll``."""
        want, got, others = set(tickets), {}, {}
        while len(got) < len(tickets):
            for t, res in self.poll():
                (got if t in want else others)[t] = res
        self._done.update(others)
        return [got[t] for t in tickets]

    def use_split(self, split: str) -> bool:
        """Score on ``split`` from now on with the same actors: their models stay loaded (a
        new evaluator would start every worker and load every model again). Jobs submitted and
        not yet returned are dropped: queued ones never start, a running one finishes
        unreported (a search asked them ahead; resume has them in its pending table)."""
        if not self.factory.can_use_split():
            return False
        for t in list(self._recipes):
            self._forget(t)
        self._queue.clear()
        self._done.clear()
        self._split = split
        return True

    def _forget(self, t: int) -> None:
        """Drop every record of ticket ``t`` but its result."""
        for book in (self._recipes, self._digests, self._wants, self._attempts, self._items):
            book.pop(t, None)

    # ---- the scheduler --------------------------------------------------------------------------
    def _pump(self) -> None:
        free = [s for s in self._slots if s.warm_ref is None and s.ticket is None]
        # every free worker takes its resident candidate's job first, then the queue's others
        for own_only in (True, False):
            for s in free:
                if not self._queue:
                    return
                if s.ticket is None:
                    self._start(s, own_only)

    def _start(self, s: _Slot, own_only: bool) -> None:
        held = {o.resident for o in self._slots if o is not s and o.resident is not None}
        queued = [self._digests.get(t) for t in self._queue]
        i = pick_ticket(queued, s.resident, held, own_only=own_only)
        if i is None:
            return
        t = self._queue[i]
        del self._queue[i]
        s.ticket, s.started = t, time.monotonic()
        s.resident = self._digests.get(t)  # (a wants job: unknown)
        s.run_ref = s.actor.run.remote(
            self._recipes[t],
            self._node_refs,
            self.timeout_s,
            self._wants.get(t),
            self._items.get(t),
            self._split,
        )

    def _wait_budget(self, deadline: float | None) -> float | None:
        budgets = [] if deadline is None else [deadline - time.monotonic()]
        if self.timeout_s is not None:
            limit = self.timeout_s + self.grace_s
            budgets += [
                s.started + limit - time.monotonic() for s in self._slots if s.ticket is not None
            ]
        return max(0.0, min(budgets)) if budgets else None

    def _step(self, wait: float | None) -> None:
        refs = [r for s in self._slots for r in (s.run_ref, s.warm_ref) if r is not None]
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=wait)
        if ready:
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        ready_set = set(ready)
        for s in self._slots:
            if s.warm_ref is not None and s.warm_ref in ready_set:
                self._finish_warmup(s)
            if s.run_ref is not None and s.run_ref in ready_set:
                self._finish_run(s)
        self._enforce_timeouts()

    def _finish_warmup(self, s: _Slot) -> None:
        from ray.exceptions import RayActorError

        try:
            s.info = self.ray.get(s.warm_ref)
            s.warm_ref, s.warm_failures = None, 0
        except RayActorError:
            s.warm_failures += 1
            s.resident = None
            if s.warm_failures >= 3:  # Ray gave up on it (or its node is gone): replace it
                self.ray.kill(s.actor, no_restart=True)
                self._replaced += 1
                fresh = self._new_slot(f"r{self._replaced}")
                s.actor, s.name, s.warm_failures = fresh.actor, fresh.name, 0
            s.warm_ref = s.actor.warmup.remote(self._node_refs)

    def _finish_run(self, s: _Slot) -> None:
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        t, ref = s.ticket, s.run_ref
        s.ticket, s.run_ref = None, None
        try:
            result = self.ray.get(ref)
        except (RayActorError, WorkerCrashedError):
            self._worker_died(s, t, "worker process died")
            return
        except RayTaskError as err:  # run_job never raises; this is Ray failing to ship a value
            if t not in self._recipes:  # dropped by use_split
                return
            result = JobResult.failed(self._recipes[t].digest(), f"ray: {err}", worker=s.name)
        self._accept(t, result)

    def _worker_died(self, s: _Slot, t: int | None, why: str) -> None:
        self.stats.worker_deaths += 1
        s.warm_ref = s.actor.warmup.remote(self._node_refs)  # waits for the restart
        s.resident = None
        if t is None or t not in self._recipes:
            return
        self._attempts[t] += 1
        if self._attempts[t] > self.max_retries:
            digest = self._recipes[t].digest()
            self._accept(
                t,
                JobResult.failed(
                    digest,
                    f"{why} {self._attempts[t]} times while evaluating this candidate "
                    "(out of memory? see the Ray worker logs)",
                    worker=s.name,
                ),
            )
            return
        self.stats.requeued += 1
        self._queue.appendleft(t)  # first in line: keeps ask order as close as possible

    def _enforce_timeouts(self) -> None:
        if self.timeout_s is None:
            return
        limit = self.timeout_s + self.grace_s
        now = time.monotonic()
        for s in self._slots:
            if s.ticket is None or now - s.started < limit:
                continue
            t = s.ticket
            s.ticket, s.run_ref = None, None
            self.stats.hard_timeouts += 1
            self.ray.kill(s.actor, no_restart=False)
            s.resident = None
            self.stats.worker_deaths += 1
            s.warm_ref = s.actor.warmup.remote(self._node_refs)
            if t not in self._recipes:  # dropped by use_split
                continue
            self._accept(
                t,
                JobResult.failed(
                    self._recipes[t].digest(),
                    f"timed out after {now - s.started:.0f} s (evaluation.timeout_s "
                    f"{self.timeout_s:g}); the worker was killed and restarted",
                    worker=s.name,
                ),
            )

    def _accept(self, t: int, result: JobResult) -> None:
        if t not in self._recipes:  # already answered (cannot score a ticket twice)
            return
        wants_job = t in self._wants
        self._forget(t)
        self._done[t] = result
        self.stats.completed += 1
        if result.worker:
            self.stats.per_worker[result.worker] = self.stats.per_worker.get(result.worker, 0) + 1
        if self.on_result is not None and not wants_job:  # (as serial: scores only)
            self.on_result(result)

    # ---- introspection and shutdown -------------------------------------------------------------
    def running(self) -> dict[str, int]:
        """Worker name -> ticket it is evaluating now."""
        return {s.name: s.ticket for s in self._slots if s.ticket is not None}

    def worker_info(self, wait_s: float = 120.0) -> list[dict[str, Any]]:
        """What each worker reports about itself (node, pid, GPUs, placement, memory). A worker
        that is still restarting after a crash is waited for (up to ``wait_s``)."""
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + wait_s
        out = []
        for slot in self._slots:
            while True:
                try:
                    out.append(self.ray.get(slot.actor.describe.remote()))
                    break
                except ActorUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        return out

    def worker_pids(self) -> dict[str, int]:
        return {s.name: s.info.get("pid", -1) for s in self._slots}

    def close(self) -> None:
        slots, self._slots = getattr(self, "_slots", []), []
        if slots:
            # every worker removes its scratch folder; wait for all before killing any
            refs = [s.actor.shutdown.remote() for s in slots]
            self.ray.wait(refs, num_returns=len(refs), timeout=30)
            for s in slots:
                self.ray.kill(s.actor, no_restart=True)
        if hasattr(self, "_scratch"):  # what a worker killed mid-way left on this node
            shutil.rmtree(self._scratch, ignore_errors=True)
        self._node_refs = {}
        if getattr(self, "_owned", False):
            self.ray.shutdown()
            self._owned = False


def pick_ticket(
    queued: Sequence[str | None], mine: str | None, elsewhere: set[str], own_only: bool = False
) -> int | None:
    """Index in the queue (digests in queue order; None: a wants job) of the job a free worker
    takes: the first of its resident candidate (``own_only``: that or None), else the first
    whose candidate is not resident on another worker, else the first (the worker holding it
    is busy: a merge costs less than leaving this one idle)."""
    if mine is not None:
        for i, d in enumerate(queued):
            if d == mine:
                return i
    if own_only:
        return None
    for i, d in enumerate(queued):
        if d is None or d not in elsewhere:
            return i
    return 0 if queued else None
