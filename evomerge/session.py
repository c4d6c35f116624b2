"""Build a search from an ExperimentConfig: store, space, driver, evaluator, archive, loop.

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

from evomerge.archive import Archive, RecipeResolver
from evomerge.config import ExperimentConfig
from evomerge.drivers.base import Driver
from evomerge.errors import UserInputError
from evomerge.fitness.digest import fitness_digests
from evomerge.io.lock import FileLock
from evomerge.loop import Budget, Progress, SearchLoop, capture_rng, restore_rng, seed_globals
from evomerge.resume_check import FITNESS_META, check_resume
from evomerge.run_lock import LOCK_FILE, lock_run, refuse_if_locked
from evomerge.spaces.base import SearchSpace
from evomerge.store import STORE_FILE, RunStore, refuse_existing
from evomerge.workers.base import Evaluator

SOURCES_DIR = "sources"  # recipes the space refers to that had to be materialized first


@dataclass
class Search:
    cfg: ExperimentConfig
    run_dir: Path
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
                from evomerge.validation import rescore_archive

                self.evaluator.close()  # its workers go before the validation workers come
                rescore_archive(self.cfg, self.run_dir, self.store, self.say)
            return final
        finally:
            self.close()

    def close(self) -> None:
        """Close the evaluator and the store, then let the next writer in (idempotent)."""
        self.evaluator.close()
        self.store.close()
        if self.lock is not None:
            self.lock.release()


def resolver_for(cfg: ExperimentConfig, run_dir: Path) -> RecipeResolver:
    roots = [run_dir, run_dir / SOURCES_DIR, *(cfg.resolve_path(p) for p in cfg.recipe_paths)]
    return RecipeResolver(roots)


def num_layers_of(folder: str) -> int:
    from evomerge.io.adapter_folder import adapter_for, open_model_folder

    adapter = adapter_for(folder)  # a LoRA adapter has its base's layers
    if adapter is not None:
        _ = open_model_folder(folder).config  # (headers) refuses an adapter its base cannot take
        folder = str(adapter.base)
    cfg_path = Path(folder) / "config.json"
    if not cfg_path.is_file():
        raise UserInputError(f"model {folder}: no config.json; give a Hugging Face model folder")
    data = json.loads(cfg_path.read_text())
    n = data.get("num_hidden_layers") or data.get("text_config", {}).get("num_hidden_layers")
    if not isinstance(n, int):
        raise UserInputError(f"{cfg_path}: no num_hidden_layers; is this a decoder LM folder?")
    return n


def build_space(cfg: ExperimentConfig, run_dir: Path) -> SearchSpace:
    from evomerge.spaces import build_space as _build

    models, base = cfg.resolved_models(), cfg.resolved_base()
    for m in [*models, *([base] if base else [])]:
        if not m.startswith("recipe:") and not Path(m).is_dir() and "+" not in m:
            raise UserInputError(f"model {m}: folder not found; check the experiment's models")
    resolve = resolver_for(cfg, run_dir)
    counts = [num_layers_of(resolve(m)) for m in models]
    if base and ("+" in base or Path(base, "adapter_config.json").is_file()):
        num_layers_of(resolve(base))  # a LoRA adapter as base_model: checked against its base
    return _build(cfg.space, base=base, models=models, num_layers=counts)


def _materialize_hybrid_winner(cfg: ExperimentConfig, run_dir: Path) -> None:
    """A hybrid space whose winner is a recipe file needs the winner on disk once."""
    if cfg.space.kind != "hybrid":
        return
    from evomerge.spaces.hybrid import resolve_winner

    ref, recipe = resolve_winner(cfg.resolve_path(cfg.space.winner))
    if recipe is None:
        return
    from evomerge.workers.materialize import write_model

    archive = Archive(run_dir / SOURCES_DIR, 1, None)
    out = archive.root.parent / recipe.digest()
    if not out.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
        # A fresh run has seeded its global RNGs by now; writing the winner must not draw from
        # them (a resume finds the folder and skips this).
        state = capture_rng()
        try:
            write_model(recipe, out, resolver_for(cfg, run_dir))
        finally:
            restore_rng(state)


def build_driver(cfg: ExperimentConfig, space: SearchSpace) -> Driver:
    from evomerge.drivers import check_fit, get_driver

    check_fit(cfg.driver.name, cfg.space)
    cls = get_driver(cfg.driver.name)
    try:
        return cls.for_space(space, seed=cfg.seed, **cfg.driver.options)
    except TypeError as err:
        raise UserInputError(
            f"driver.options {sorted(cfg.driver.options)} for {cfg.driver.name!r}: {err}; "
            "check the option names in the driver's docs"
        ) from None


def build_evaluator(cfg: ExperimentConfig, run_dir: Path, split: str = "search") -> Evaluator:
    if cfg.workers > 1 or cfg.ray_address:
        try:
            from evomerge.workers.ray_evaluator import RayEvaluator
        except ImportError:
            raise UserInputError(
                "workers > 1 / ray_address need the Ray evaluator, which this build does not "
                "have yet; use workers: 1 (the serial evaluator)"
            ) from None
        return RayEvaluator.from_config(cfg, resolver_for(cfg, run_dir), split)
    from evomerge.workers import threads
    from evomerge.workers.context import ResidentWorker
    from evomerge.workers.serial import SerialEvaluator

    resolver = resolver_for(cfg, run_dir)
    return SerialEvaluator(
        lambda: ResidentWorker(cfg, resolver=resolver, worker="serial", split=split),
        timeout_s=cfg.evaluation.timeout_s,
        threads=threads.choose_serial(cfg.evaluation.threads),
    )


def thread_summary(cfg: ExperimentConfig, evaluator: Evaluator) -> str:
    """What ``status`` shows: the threads each worker of this run (or resume) uses."""
    import torch

    from evomerge.workers import threads

    choice = getattr(evaluator, "threads", None)
    if choice is not None:
        interop = torch.get_num_interop_threads()  # set once per process: may predate us
        return f"{choice.intra} torch thread(s), {interop} interop ({choice.reason}), serial"
    if cfg.workers > 1 or cfg.ray_address:
        ev = cfg.evaluation
        return f"{threads.choose_ray(ev.threads, ev.cpus_per_worker).describe()} per Ray worker"
    return f"{torch.get_num_threads()} torch thread(s) (set by the caller), serial evaluator"


def validate_fitness(cfg: ExperimentConfig) -> None:
    """Build the fitness once (imports a python fitness file, resolves task folders) so that a
    missing file or function, or a module that raises on import, is refused before any write.
    Workers build their own later; this copy is dropped."""
    from evomerge.fitness import build_fitness

    build_fitness(cfg.fitness, base_dir=Path(cfg.base_dir))


def _assemble(cfg, run_dir, store, space, driver, evaluator, resumed, lock, hooks) -> Search:
    from evomerge.workers.materialize import write_model

    store.set_meta("threads", thread_summary(cfg, evaluator))
    resolver = resolver_for(cfg, run_dir)
    archive = Archive(run_dir, cfg.archive.top_k, lambda r, out: write_model(r, out, resolver))
    b = cfg.budget
    max_cand = b.max_candidates or (10 * b.max_evals if b.max_evals else None)
    # Drivers that can ask ahead get the pipelined loop (workers never idle at a barrier); its
    # schedule is the same with every evaluator, so the archive does not depend on --workers.
    loop_cls = SearchLoop
    if driver.can_ask_ahead:
        from evomerge.loop_ahead import AskAheadLoop as loop_cls
    loop = loop_cls(
        store=store,
        space=space,
        driver=driver,
        evaluator=evaluator,
        archive=archive,
        budget=Budget(b.max_evals, b.max_seconds, max_cand, b.max_total_seconds, b.max_item_evals),
        on_generation=hooks[0],
        stop_event=hooks[1],
        racer=build_racer(cfg, driver),
    )
    loop.restore()
    return Search(cfg, run_dir, store, space, driver, evaluator, loop, resumed, lock)


def _parts(cfg: ExperimentConfig, run_dir: Path, *, fresh: bool) -> tuple[SearchSpace, Driver]:
    """Space and driver, built with no write. A fresh run seeds the global RNGs after the space
    (whose zoo build may draw from them) and before the driver, as it always did."""
    from evomerge.drivers import check_fit

    check_fit(cfg.driver.name, cfg.space)  # a driver that cannot walk the space: before any I/O
    validate_fitness(cfg)
    from evomerge.validation import check_buildable

    check_buildable(cfg)  # (fitness.validation: its items and functions too)
    space = build_space(cfg, run_dir)
    if fresh:
        seed_globals(cfg.seed)
    driver = build_driver(cfg, space)
    build_racer(cfg, driver)  # a driver racing cannot serve: refused before any write
    return space, driver


def build_racer(cfg: ExperimentConfig, driver: Driver) -> Any:
    """The racer of ``fitness.racing`` (None when off); refuses a driver that needs every
    candidate scored on every item, and a budget in item evaluations nothing counts."""
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
    return Racer(r, ItemPool.build(fitness, cfg.seed), fitness, need, cfg.archive.top_k)


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
    space, driver = _parts(cfg, run_dir, fresh=True)
    digests = fitness_digests(cfg.fitness, cfg.base_dir)
    lock, made = _locked_new_folder(run_dir)
    store = None
    try:
        refuse_existing(run_dir)  # another search may have started it meanwhile
        evaluator = evaluator or build_evaluator(cfg, run_dir)
        _materialize_hybrid_winner(cfg, run_dir)
        meta = {FITNESS_META: json.dumps(digests, sort_keys=True)}
        store = RunStore.create(run_dir, cfg.to_json(), cfg.structural_hash(), meta)
        hooks = (on_generation, stop_event)
        return _assemble(cfg, run_dir, store, space, driver, evaluator, False, lock, hooks)
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
        space, driver = _parts(plan.cfg, run_dir, fresh=not plan.resumed)
        evaluator = evaluator or build_evaluator(plan.cfg, run_dir)
        _materialize_hybrid_winner(plan.cfg, run_dir)
        store = RunStore.open(run_dir)  # the first write access: everything was checked
        plan.record(store)
        hooks = (on_generation, stop_event)
        args = (plan.cfg, run_dir, store, space, driver, evaluator, plan.resumed, lock, hooks)
        return _assemble(*args)
    except BaseException:
        if evaluator is not None:
            evaluator.close()
        if store is not None:
            store.close()
        lock.release()
        raise
