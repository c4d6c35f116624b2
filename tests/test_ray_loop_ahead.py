"""The ask-ahead schedule of the search loop: the next batch is asked and submitted before the current one is told, the
archive does not depend on the evaluator or on completion order, and resume stays exact with a
batch in flight. (Cheap objective from test_loop; the Ray evaluator end to end lives in
test_ray_evaluator.py.)"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import numpy as np

from evomerge.archive import Archive
from evomerge.drivers.base import Candidate
from evomerge.loop import Budget
from evomerge.loop_ahead import AskAheadLoop
from evomerge.recipe import Recipe
from evomerge.rng_state import seed_globals
from evomerge.store import RunStore
from evomerge.workers.base import JobResult
from tests.test_loop import GridSpace, Objective, SeededRandom, _writer


class Adaptive(SeededRandom):
    """Samples around the best told point: what it asks depends on when tells happen."""

    name = "test_adaptive"

    def ask(self, n=None):
        n = n or self.popsize
        good = [(f, i) for i, f in self.told if f == f]
        centre = self.xs[max(good)[1]] if good else self.x0
        xs = np.clip(centre + self.rng.normal(0, 0.2, (n, self.dim)), self.lower, self.upper)
        cands = [Candidate(self.count + i, x) for i, x in enumerate(xs)]
        self.xs.update({c.index: c.x for c in cands})
        self.count += n
        return cands

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.xs: dict[int, np.ndarray] = {}

    def state_dict(self):
        return {**super().state_dict(), "xs": dict(self.xs)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.xs = dict(state["xs"])


class ScrambledStream(Objective):
    """A streaming evaluator whose candidates finish in a random order, a few at a time."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.queue: dict[int, Recipe] = {}
        self.next, self.rng, self.max_in_flight = 0, random.Random(seed), 0

    def submit(self, recipe: Recipe) -> int:
        self.queue[self.next] = recipe
        self.next += 1
        self.max_in_flight = max(self.max_in_flight, len(self.queue))
        return self.next - 1

    def poll(self, timeout=None) -> list[tuple[int, JobResult]]:
        picked = self.rng.sample(sorted(self.queue), k=min(2, len(self.queue)))
        return [(t, super(ScrambledStream, self).evaluate([self.queue.pop(t)])[0]) for t in picked]

    def evaluate(self, recipes: Sequence[Recipe]) -> list[JobResult]:
        raise AssertionError("the ask-ahead loop must stream to a streaming evaluator")


def _loop(run_dir, max_evals, evaluator, stop_event=None, on_generation=None):
    path = run_dir / "store.sqlite"
    store = RunStore.open(run_dir) if path.exists() else RunStore.create(run_dir, "{}", "h")
    space = GridSpace()
    seed_globals(0)
    driver = Adaptive(2, *space.bounds, space.x0(), seed=3)
    loop = AskAheadLoop(
        store=store,
        space=space,
        driver=driver,
        evaluator=evaluator,
        archive=Archive(run_dir, 3, _writer),
        budget=Budget(max_evals=max_evals),
        stop_event=stop_event,
        on_generation=on_generation,
    )
    loop.restore()
    return loop, store, driver


def _key(store):
    return [(t.idx, t.digest, t.genes, t.status, t.fitness, t.reused_from) for t in store.trials()]


def test_streaming_equals_serial_and_keeps_two_batches_in_flight(tmp_path):
    stream = ScrambledStream()
    a, store_a, drv_a = _loop(tmp_path / "stream", 40, stream)
    final = a.run()
    serial = Objective()
    b, store_b, drv_b = _loop(tmp_path / "serial", 40, serial)
    b.run()
    assert final.stop_reason == "max_evals" and final.n_evals == 40
    assert _key(store_a) == _key(store_b) and store_a.archive() == store_b.archive()
    assert drv_a.told == drv_b.told
    assert [i for i, _ in drv_a.told] == [t.idx for t in store_a.trials()]  # ask order
    assert stream.max_in_flight > drv_a.popsize  # the next batch ran beside the current one
    assert max(stream.calls.values()) == 1  # a recipe of both batches is evaluated once
    assert any(t.reused_from is not None for t in store_a.trials())


def test_resume_with_a_batch_in_flight_is_exact(tmp_path):
    full, store_full, _ = _loop(tmp_path / "full", 36, ScrambledStream(1))
    full.run()
    stop = threading.Event()
    gens = []

    def on_gen(p):
        gens.append(p.generation)
        if len(gens) == 2:
            stop.set()

    part, store_part, _ = _loop(tmp_path / "part", 36, ScrambledStream(2), stop, on_gen)
    assert part.run().stop_reason == "interrupted"
    assert part._ahead is not None  # the checkpoint holds an asked, untold batch
    store_part.close()
    rest, store_part, _ = _loop(tmp_path / "part", 36, ScrambledStream(3))
    assert rest._restored
    rest.run()
    assert _key(store_part) == _key(store_full)
    assert store_part.archive() == store_full.archive()
