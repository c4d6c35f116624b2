"""The builder: a search from an ExperimentConfig: store, space, driver, evaluator, archive, loop.

Each part is made once: ``resolve_experiment`` (``evomerge.experiment``) resolves the models and
reads what the space needs, then the space, the driver, the racer (``fitness.racing``), the
workers' spec and the evaluator are built from it; the one file this writes before the store
(a hybrid space's winner recipe, merged into ``RUN/sources/``) is written by
``write_sources``, after the run folder's lock is taken.

``open_search(cfg, run_dir)`` starts a new run; ``open_resume(run_dir, new_cfg=None)`` reopens
one, refusing a structurally different config (see ``evomerge.config`` for what is structural)
or changed fitness code (``evomerge.fitness.digest``). Both return a ``Search`` whose ``run()``
drives ``evomerge.loop.SearchLoop``.

Order matters for "nothing written on a refusal": every user error (config, fitness file,
driver options, a driver that does not fit the space, a changed resume config) surfaces while
nothing has been written and a resumed store is open read-only; then the run folder's lock is
taken (one writer per folder, ``evomerge.run_lock``) and only then is the store created or
opened for writing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evomerge.archive import Archive
from evomerge.config import ExperimentConfig
from evomerge.drivers.base import Driver
from evomerge.errors import UserInputError
from evomerge.experiment import SOURCES_DIR, Experiment, check_space_merges, resolve_experiment
from evomerge.fitness.digest import fitness_digests
from evomerge.io.lock import FileLock
from evomerge.loop import Budget, Progress, SearchLoop
from evomerge.resume_check import FITNESS_META, check_resume
from evomerge.rng_state import capture_rng, restore_rng, seed_globals
from evomerge.run_lock import LOCK_FILE, lock_run, refuse_if_locked
from evomerge.spaces.base import SearchSpace
from evomerge.store import STORE_FILE, RunStore, refuse_existing
from evomerge.workers.base import Evaluator
from evomerge.workers.evaluators import make_evaluator


@dataclass
class Search:
    cfg: ExperimentConfig
    run_dir: Path
    experiment: Experiment
    store: RunStore
    space: SearchSpace
    driver: Driver
    evaluator: Evaluator
    loop: SearchLoop
    resumed: bool
    lock: FileLock | None = None
    say: Callable[[str], None] | None = None

    def run(self) -> Progress:
        try:
            final = self.loop.run()
            if final.stop_reason != "interrupted":  # Ctrl-C: resume validates later
                from evomerge.baselines import all_baseline_recipes
                from evomerge.validation import rescore_archive

                experts = all_baseline_recipes(self.experiment)  # and base, the simple merges
                rescore_archive(self.cfg, self.store, self._validation_evaluator, self.say, experts)
            return final
        finally:
            self.close()

    def _validation_evaluator(self) -> Evaluator:
        """The search's own workers on the validation items: their models stay loaded. An
        evaluator that cannot switch goes before a validation one comes (one set of workers
        in memory at a time)."""
        if self.evaluator.use_split("validation"):
            return self.evaluator
        self.evaluator.close()
        return evaluator_for(self.experiment, split="validation")

    def close(self) -> None:
        """Close the evaluator and the store, then let the next writer in (idempotent)."""
        self.evaluator.close()
        self.store.close()
        if self.lock is not None:
            self.lock.release()


def space_for(experiment: Experiment) -> SearchSpace:
    from evomerge.spaces import build_space as _build

    e = experiment
    return _build(
        e.cfg.space, base=e.base, models=list(e.models), num_layers=e.num_layers, winner=e.winner
    )


def build_space(cfg: ExperimentConfig, run_dir: Path) -> SearchSpace:
    """The space of ``cfg`` on its own (the report, tests): resolves the models first."""
    return space_for(resolve_experiment(cfg, run_dir))


def write_sources(experiment: Experiment) -> None:
    """A hybrid space whose winner is a recipe file needs the winner on disk once, under
    ``RUN/sources/<digest>`` (the workers read it as any other model). Called after the run
    folder's lock is taken; nothing else the builder makes writes a file."""
    recipe = experiment.winner
    if recipe is None:
        return
    from evomerge.workers.materialize import write_model

    out = experiment.run_dir / SOURCES_DIR / recipe.digest()
    if not out.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
        # A fresh run has seeded its global RNGs by now; writing the winner must not draw from
        # them (a resume finds the folder and skips this).
        state = capture_rng()
        try:
            write_model(recipe, out, experiment.resolver)
        finally:
            restore_rng(state)


def build_driver(cfg: ExperimentConfig, space: SearchSpace) -> Driver:
    from evomerge.drivers import check_fit, get_driver

    check_fit(cfg.driver.name, cfg.space)
    cls = get_driver(cfg.driver.name)
    # driver.options are checked by the driver's options dataclass (drivers/options.py)
    return cls.for_space(space, seed=cfg.seed, **cfg.driver.options)


def evaluator_for(experiment: Experiment, split: str = "search") -> Evaluator:
    """Serial or Ray, each worker built from the experiment's small ``WorkerSpec``."""
    cfg = experiment.cfg
    return make_evaluator(
        experiment.worker_spec(split),
        experiment.resolver,
        workers=cfg.workers,
        ray_address=cfg.ray_address,
    )


def build_evaluator(cfg: ExperimentConfig, run_dir: Path, split: str = "search") -> Evaluator:
    """The evaluator of ``cfg`` on its own (benchmarks): resolves the models first."""
    return evaluator_for(resolve_experiment(cfg, run_dir), split)


def thread_summary(cfg: ExperimentConfig, evaluator: Evaluator) -> str:
    """What ``status`` shows: the threads each worker of this run (or resume) uses."""
    import torch

    from evomerge.workers import threads

    choice = getattr(evaluator, "threads", None)
    if choice is not None:
        interop = torch.get_num_interop_threads()  # set once per process: may predate us
        return f"{choice.intra} torch thread(s), {interop} interop ({choice.reason}), serial"
    if not in_process(cfg):
        ev = cfg.evaluation
        return f"{threads.choose_ray(ev.threads, ev.cpus_per_worker).describe()} per Ray worker"
    return f"{torch.get_num_threads()} torch thread(s) (set by the caller), serial evaluator"


def validate_fitness(cfg: ExperimentConfig) -> None:
    """Build the fitness once (imports a python fitness file, resolves task folders, loads
    lm-eval tasks' documents) so that a missing file, function or dataset, or a module that
    raises on import, is refused before any write. Workers build their own later; this copy
    is dropped (an in-process worker reuses lm-eval's loaded tasks: they are cached per
    process)."""
    from evomerge.fitness import build_fitness

    fitness = build_fitness(cfg.fitness, base_dir=Path(cfg.base_dir))
    for runner in fitness.runners:
        if hasattr(runner, "leaves"):  # lm_eval: the task's documents
            runner.leaves()


@dataclass(frozen=True)
class Parts:
    """What ``_parts`` builds before any write and ``_assemble`` puts together after it."""

    experiment: Experiment
    space: SearchSpace
    driver: Driver
    racer: Any  # evomerge.racing.Racer, or None when racing is off


def _assemble(parts: Parts, store, evaluator, resumed, lock, hooks) -> Search:
    from evomerge.fitness.constraints import Constraints
    from evomerge.workers.materialize import write_model

    experiment, space, driver = parts.experiment, parts.space, parts.driver
    cfg, run_dir, resolver = experiment.cfg, experiment.run_dir, experiment.resolver
    store.set_meta("threads", thread_summary(cfg, evaluator))
    archive = Archive(run_dir, cfg.archive.top_k, lambda r, out: write_model(r, out, resolver))
    b = cfg.budget
    max_cand = b.max_candidates or (10 * b.max_evals if b.max_evals else None)
    loop = SearchLoop(
        store=store,
        space=space,
        driver=driver,
        evaluator=evaluator,
        archive=archive,
        budget=Budget(b.max_evals, b.max_seconds, max_cand, b.max_total_seconds, b.max_item_evals),
        on_generation=hooks[0],
        stop_event=hooks[1],
        racer=parts.racer,
        constraints=Constraints.of(cfg.fitness),
    )
    loop.restore()
    return Search(cfg, run_dir, experiment, store, space, driver, evaluator, loop, resumed, lock)


def _parts(cfg: ExperimentConfig, run_dir: Path, *, fresh: bool) -> Parts:
    """The resolved experiment, space, driver and racer, built with no write. A fresh run
    seeds the global RNGs after resolving the models (whose zoo build may draw from them) and
    before the driver, as it always did."""
    from evomerge.drivers import check_fit
    from evomerge.workers.device_check import check_device

    check_fit(cfg.driver.name, cfg.space)  # a driver that cannot walk the space: before any I/O
    check_device(cfg.evaluation, in_process=in_process(cfg))
    validate_fitness(cfg)
    from evomerge.validation import check_buildable

    check_buildable(cfg)  # (fitness.validation: its items and functions too)
    experiment = resolve_experiment(cfg, run_dir)
    space = space_for(experiment)
    check_space_merges(space, experiment)  # experts the merge cannot combine: before writes
    if fresh:
        seed_globals(cfg.seed)
    driver = build_driver(cfg, space)
    racer = build_racer(cfg, driver, new_run=fresh)  # what it cannot serve: refused before writes
    return Parts(experiment, space, driver, racer)


def in_process(cfg: ExperimentConfig) -> bool:
    """Whether candidates are scored in this process (the serial evaluator), not on Ray."""
    return cfg.workers == 1 and not cfg.ray_address


def build_racer(cfg: ExperimentConfig, driver: Driver, *, new_run: bool = False) -> Any:
    """The racer of ``fitness.racing`` (None when off); refuses a driver that needs every
    candidate scored on every item and, for a new run, a first slice that holds every item
    (racing would then score every candidate in full, only slower; a run started so before
    this check still resumes)."""
    r = cfg.fitness.racing
    if r is None or not r.enabled:
        return None
    need = driver.racing_need()
    if need is None:
        raise UserInputError(
            f"fitness.racing: driver {cfg.driver.name} {driver.racing_refusal()}; remove "
            "fitness.racing (or set enabled: false) or use cma_es, random or optuna"
        )
    from evomerge.fitness import build_fitness
    from evomerge.fitness.items import ItemPool
    from evomerge.racing import Racer

    fitness = build_fitness(cfg.fitness, base_dir=Path(cfg.base_dir))
    pool = ItemPool.build(fitness, cfg.seed)
    if new_run and r.first_slice >= pool.size:
        raise UserInputError(
            f"fitness.racing.first_slice: {r.first_slice} is not below the {pool.size} search "
            "items of the fitness, so racing would score every candidate on every item; give "
            f"a smaller first slice (e.g. {max(2, pool.size // 5)}) or remove fitness.racing"
        )
    places = cfg.archive.top_k if r.archive_places is None else r.archive_places
    if places > cfg.archive.top_k:
        raise UserInputError(
            f"fitness.racing.archive_places: {places} is above archive.top_k "
            f"({cfg.archive.top_k}); give at most {cfg.archive.top_k} or raise archive.top_k"
        )
    return Racer(r, pool, fitness, need, places)


def _locked_new_folder(run_dir: Path) -> tuple[FileLock, bool]:
    """Create the run folder (if needed) and take its lock. On a refusal the lock file is the
    holder's (another search made the folder at the same moment): leave both alone."""
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    return lock_run(run_dir), made


def _undo_new_folder(run_dir: Path, lock: FileLock, made: bool) -> None:
    """After a failed start: remove the lock file while still holding it (so nobody can have
    locked it meanwhile), release, and remove the folder if we made it and it is empty."""
    if made and not (run_dir / STORE_FILE).exists():
        shutil.rmtree(run_dir / SOURCES_DIR, ignore_errors=True)
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
    lock.release()
    if made:
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # only if empty: never remove what someone else put there


def open_search(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    evaluator: Evaluator | None = None,
    on_generation: Callable[[Progress], None] | None = None,
    stop_event: threading.Event | None = None,
) -> Search:
    run_dir = Path(run_dir)
    refuse_existing(run_dir)
    parts = _parts(cfg, run_dir, fresh=True)
    digests = fitness_digests(cfg.fitness, cfg.base_dir)
    lock, made = _locked_new_folder(run_dir)
    store = None
    try:
        refuse_existing(run_dir)  # another search may have started it meanwhile
        evaluator = evaluator or evaluator_for(parts.experiment)
        write_sources(parts.experiment)
        meta = {FITNESS_META: json.dumps(digests, sort_keys=True)}
        store = RunStore.create(run_dir, cfg.to_json(), cfg.structural_hash(), meta)
        hooks = (on_generation, stop_event)
        return _assemble(parts, store, evaluator, False, lock, hooks)
    except BaseException:
        if evaluator is not None:
            evaluator.close()
        if store is not None:
            store.close()
        _undo_new_folder(run_dir, lock, made)
        raise


def open_resume(
    run_dir: str | Path,
    *,
    new_cfg: ExperimentConfig | None = None,
    allow_changed_fitness: bool = False,
    max_evals: int | None = None,
    evaluator: Evaluator | None = None,
    on_generation: Callable[[Progress], None] | None = None,
    stop_event: threading.Event | None = None,
) -> Search:
    """Reopen a run. ``max_evals`` is the total the user asked for on the command line (a
    total at or below what the run has done is refused: it would do nothing)."""
    run_dir = Path(run_dir)
    refuse_if_locked(run_dir)
    RunStore.open(run_dir, readonly=True).close()  # "no run store here" before any lock file
    lock = lock_run(run_dir)
    store = None
    try:
        plan = check_resume(run_dir, new_cfg, allow_changed_fitness, max_evals)
        parts = _parts(plan.cfg, run_dir, fresh=not plan.resumed)
        evaluator = evaluator or evaluator_for(parts.experiment)
        write_sources(parts.experiment)
        store = RunStore.open(run_dir)  # the first write access: everything was checked
        plan.record(store)
        hooks = (on_generation, stop_event)
        return _assemble(parts, store, evaluator, plan.resumed, lock, hooks)
    except BaseException:
        if evaluator is not None:
            evaluator.close()
        if store is not None:
            store.close()
        lock.release()
        raise
