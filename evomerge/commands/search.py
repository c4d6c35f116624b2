"""``evomerge search EXPERIMENT --run-dir DIR`` and ``evomerge resume DIR``: build the search
(``evomerge.build``), score the baselines, run the loop under a live progress display
(``evomerge.commands.progress``: a bar on a terminal, a line per generation in a log), print
the winner. The first SIGINT/SIGTERM finishes the generation in flight; a second SIGINT aborts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from evomerge.commands.console import console, out, say
from evomerge.commands.progress import live_progress
from evomerge.errors import UserInputError
from evomerge.loop import Progress


def search(
    experiment: Path,
    run_dir: Path | None,
    *,
    max_evals: int | None = None,
    max_seconds: float | None = None,
    seed: int | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    max_total_seconds: float | None = None,
) -> int:
    from evomerge.build import open_search
    from evomerge.config import load_experiment

    overrides = _overrides(max_evals, max_seconds, seed, workers, ray_address)
    overrides.update(_total(max_total_seconds))
    cfg = load_experiment(experiment, overrides)
    if run_dir is None:
        raise UserInputError("--run-dir is required: the folder that will hold the run's store")
    stop, relay = threading.Event(), _Relay()
    # Every user error surfaces here, before any progress display starts.
    s = open_search(cfg, run_dir, on_generation=relay, stop_event=stop)
    return _drive(s, stop, relay)


def resume(
    run_dir: Path,
    *,
    config: Path | None = None,
    max_evals: int | None = None,
    max_seconds: float | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    max_total_seconds: float | None = None,
    allow_changed_fitness: bool = False,
) -> int:
    """``max_evals`` is the run's new total; ``max_seconds`` counts from this resume's start."""
    from evomerge.build import open_resume
    from evomerge.config import load_experiment, parse_experiment
    from evomerge.store import RunStore

    new_cfg = None
    # workers / ray_address are not structural: a requeued SLURM job resumes on a new cluster.
    overrides = _overrides(max_evals, max_seconds, None, workers, ray_address)
    overrides.update(_total(max_total_seconds))
    if config is not None:
        new_cfg = load_experiment(config, overrides)
    elif overrides:
        with RunStore.open(run_dir, readonly=True) as st:
            data = json.loads(st.config_json())
        for key, value in overrides.items():
            section, _, leaf = key.partition(".")
            data[section] = {**data.get(section, {}), leaf: value} if leaf else value
        new_cfg = parse_experiment(data, origin="resume options")
    stop, relay = threading.Event(), _Relay()
    s = open_resume(
        run_dir,
        new_cfg=new_cfg,
        allow_changed_fitness=allow_changed_fitness,
        max_evals=max_evals,
        on_generation=relay,
        stop_event=stop,
    )
    return _drive(s, stop, relay)  # baselines are scored only if missing or all failed


class _Relay:
    """The loop's progress callback, pointed at the live display once it exists; it also prints
    the first occurrence of each new failure reason the generation committed."""

    target = None
    failures = None  # (FailureLog, store) once the search is open

    def __call__(self, p: Progress) -> None:
        if self.failures is not None:
            log, store = self.failures
            log.note_new_trials(store)
        if self.target is not None:
            self.target.update(p)


def _drive(s, stop: threading.Event, relay: _Relay) -> int:
    from evomerge.baselines import score_baselines
    from evomerge.build import in_process
    from evomerge.failures import FailureLog
    from evomerge.workers.device_check import idle_gpu_note
    from evomerge.workers.memory_check import memory_note

    log = FailureLog(say)
    relay.failures = (log, s.store)
    s.say = say
    try:
        with _signals(stop):
            say(f"threads: {s.store.get_meta('threads')}")
            local = in_process(s.cfg)
            for note in (
                idle_gpu_note(s.cfg.evaluation, in_process=local),
                memory_note(s.experiment, in_process=local),
            ):
                if note:
                    say(note)
            score_baselines(s, log, say)
            log.note_new_trials(s.store, quiet=True)  # a resume: earlier reasons are not news
            with live_progress(s.cfg.budget.max_evals, s.cfg.budget.max_item_evals) as live:
                relay.target = live
                s.say = live.say  # validation's lines come after the last generation's
                live.update(s.loop.progress())
                final = s.run()  # closes the evaluator and the store, releases the lock
    except BaseException:
        s.close()
        raise
    return _finish(final, s.run_dir, s.cfg.budget.max_item_evals)


def _overrides(max_evals, max_seconds, seed, workers, ray_address) -> dict:
    o = {
        "budget.max_evals": max_evals,
        "budget.max_seconds": max_seconds,
        "seed": seed,
        "workers": workers,
        "ray_address": ray_address,
    }
    return {k: v for k, v in o.items() if v is not None}


def _total(max_total_seconds: float | None) -> dict:
    return {} if max_total_seconds is None else {"budget.max_total_seconds": max_total_seconds}


def _finish(final: Progress, run_dir: Path, max_item_evals: int | None) -> int:
    from evomerge.fitness.constraints import run_is_constrained
    from evomerge.stop_reason import stop_detail
    from evomerge.store import RunStore
    from evomerge.validation import member_line, ranking
    from evomerge.validation_baselines import baseline_line, baseline_scores, winner_note

    with RunStore.open(run_dir, readonly=True) as st:
        baselines = baseline_scores(st)
        ranked = ranking(st)
        constrained = run_is_constrained(st)
    spent = stop_detail(final.stop_reason, final, max_item_evals)
    out.print(f"stopped: {final.stop_reason}; {spent}, {final.elapsed:.0f} s")
    if final.best_digest is None and constrained and final.n_evals > final.n_failed:
        out.print(
            "no feasible candidate: none met every bound of fitness.constraints, so there is no "
            f"winner; loosen a bound or search longer (evomerge status {run_dir})"
        )
        return 1
    if final.stop_reason == "all_failed":  # the reasons were printed as they first came
        out.print(
            "stopped early: every candidate of this run failed, so the rest of the budget "
            f"would too; fix the cause above, then `evomerge resume {run_dir}` continues"
        )
    if final.best_digest is None:
        out.print(f"no candidate succeeded; failures by reason: evomerge status {run_dir}")
        return 1
    if ranked.enabled and ranked.members:  # the winner is chosen on the held-out items
        w = ranked.members[0]
        final = dataclasses.replace(final, best_digest=w.digest)
        out.print(f"winner {w.digest[:12]}  {member_line(w)}  ({ranked.winner_note()})")
    else:
        out.print(f"winner {final.best_digest[:12]}  fitness {final.best_fitness:.4f}")
    for name, (fit, val) in baselines.items():
        out.print(f"  {name:<31} {baseline_line(fit, val, ranked.on_validation)}")
    out.print(f"archive: {Path(run_dir) / 'archive' / final.best_digest}")
    note = winner_note(ranked, baselines, constrained)
    if note:
        out.print(note)
    if final.stop_reason == "interrupted":
        out.print(f"interrupted at a generation boundary; continue with: evomerge resume {run_dir}")
    return 0


@contextlib.contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: finish and commit the generation in flight, then stop. Second
    SIGINT: abort at once (the uncommitted generation is simply redone on resume)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        console.print("[yellow]stopping after this generation (Ctrl-C again to abort)[/]")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
