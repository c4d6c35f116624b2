"""The search loop's results on a cheap objective, recorded once by the two-loop code (before the
one-loop redesign of issue 17) in tests/data/loop_golden.json; tests/test_loop_golden.py checks
that the loop still gives exactly them. Each run: every candidate (index, generation, digest,
genes, status, fitness, reuse), what the driver was told, and the archive. The drivers are the
registered ones (random, Optuna, M2N2 ask ahead; CMA-ES does not) plus test_ray_loop_ahead's
tell-dependent one, serial and on a streaming evaluator that finishes out of order.

    python -m tests.helpers.loop_golden      # rewrite the golden file (only on purpose)
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "loop_golden.json"

# name -> (driver, options, max_evals, evaluator)
RUNS = {
    "random": ("random", {"batch_size": 4}, 14, "serial"),
    "optuna": ("optuna", {"batch_size": 3}, 12, "serial"),
    "m2n2": ("m2n2", {"archive_size": 4, "batch_size": 2, "init": "uniform"}, 14, "serial"),
    "m2n2_stream": ("m2n2", {"archive_size": 4, "batch_size": 2, "init": "uniform"}, 14, "stream"),
    "cma_es": ("cma_es", {"popsize": 4}, 14, "serial"),
    "adaptive_stream": ("adaptive", {}, 20, "stream"),
}


def _driver(name: str, options: dict, space):
    from evomerge.drivers import get_driver
    from tests.test_ray_loop_ahead import Adaptive

    cls = Adaptive if name == "adaptive" else get_driver(name)
    return cls(space.dim, *space.bounds, space.x0(), seed=3, **options)


def run(name: str, run_dir: Path, stop_event=None, on_generation=None) -> dict:
    """Run (or resume, when ``run_dir`` holds a store) one of RUNS; its snapshot."""
    from evomerge.archive import Archive
    from evomerge.loop import Budget, SearchLoop
    from evomerge.rng_state import seed_globals
    from evomerge.store import RunStore
    from tests.test_loop import GridSpace, Objective, _writer
    from tests.test_ray_loop_ahead import ScrambledStream

    driver_name, options, max_evals, kind = RUNS[name]
    fresh = not (run_dir / "store.sqlite").exists()
    store = RunStore.create(run_dir, "{}", "h") if fresh else RunStore.open(run_dir)
    space = GridSpace()
    seed_globals(0)
    driver = _driver(driver_name, options, space)
    loop_cls = SearchLoop
    if driver.can_ask_ahead:  # what build.py chose before issue 17 (an alias after it)
        from evomerge.loop_ahead import AskAheadLoop as loop_cls
    loop = loop_cls(
        store=store,
        space=space,
        driver=driver,
        evaluator=ScrambledStream(1) if kind == "stream" else Objective(),
        archive=Archive(run_dir, 3, _writer),
        budget=Budget(max_evals=max_evals, max_candidates=4 * max_evals),
        stop_event=stop_event,
        on_generation=on_generation,
    )
    loop.restore()
    loop.run()
    trials = [
        [t.idx, t.generation, t.digest, list(t.genes), t.status, _num(t.fitness), t.reused_from]
        for t in store.trials()
    ]
    archive = [[e.rank, e.digest, e.idx, e.fitness] for e in store.archive()]
    on_disk = sorted(p.name for p in (run_dir / "archive").iterdir())
    store.close()
    return {"trials": trials, "archive": archive, "on_disk": on_disk}


def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else v


def record() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        got = {name: run(name, Path(tmp) / name) for name in RUNS}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(got, indent=0) + "\n")


if __name__ == "__main__":
    record()
