"""The search loop on a cheap objective: dedupe, ask-order telling, failures as data, budgets,
stop requests and in-process resume. (The end-to-end version with real tiny models, real merges
and SIGKILL lives in test_resume.py.)"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence

import numpy as np

from evomerge.archive import Archive
from evomerge.drivers.base import Candidate, Driver
from evomerge.loop import Budget, SearchLoop
from evomerge.recipe import ModelRef, Recipe
from evomerge.rng_state import seed_globals
from evomerge.spaces.base import SearchSpace
from evomerge.store import RunStore
from evomerge.workers.base import OK, Evaluator, JobResult


class GridSpace(SearchSpace):
    """Two genes, decoded on a 0.1 grid, so different genes often give the same recipe."""

    dim = 2
    bounds = (np.zeros(2), np.ones(2))

    def x0(self):
        return np.full(2, 0.5)

    def gene_names(self):
        return ["a/all/*/weight", "b/all/*/weight"]

    def decode(self, x):
        w = [round(float(v), 1) for v in x]
        models = [ModelRef(model=m, parameters={"weight": v}) for m, v in zip("ab", w, strict=True)]
        return Recipe(merge_method="linear", models=models)


class Objective(Evaluator):
    """Peak at weights (0.3, 0.7); weight a >= 0.9 raises (a failing candidate)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def evaluate(self, recipes: Sequence[Recipe]) -> list[JobResult]:
        out = []
        for r in recipes:
            d = r.digest()
            self.calls[d] += 1
            a, b = (m.parameters["weight"] for m in r.models)
            if a >= 0.9:
                out.append(JobResult.failed(d, "RuntimeError: boom"))
            else:
                out.append(JobResult(d, OK, -((a - 0.3) ** 2) - (b - 0.7) ** 2, seconds=0.0))
        return out


class SeededRandom(Driver):
    name = "test_random"
    can_ask_ahead = True

    def __init__(self, dim, lower, upper, x0, *, seed, popsize=6):
        super().__init__(dim, lower, upper, x0, seed=seed)
        self.popsize, self.rng, self.count = popsize, np.random.default_rng(seed), 0
        self.batch_size = popsize  # asks ahead: the loop asks at most this many
        self.told: list[tuple[int, float]] = []

    def ask(self, n=None):
        n = n or self.popsize
        xs = self.rng.uniform(self.lower, self.upper, (n, self.dim))
        cands = [Candidate(self.count + i, x) for i, x in enumerate(xs)]
        self.count += n
        return cands

    def tell(self, candidates, fitness, details=None):
        self.told += [(c.index, f) for c, f in zip(candidates, fitness, strict=True)]

    def stop(self):
        return False

    @property
    def best(self):
        return None

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "count": self.count, "told": self.told}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.count, self.told = state["count"], list(state["told"])


def _writer(recipe, out):
    out.mkdir(parents=True)
    (out / "recipe.yaml").write_text(recipe.to_yaml())


def _loop(run_dir, max_evals, *, evaluator=None, stop_event=None, on_generation=None):
    path = run_dir / "store.sqlite"
    store = RunStore.open(run_dir) if path.exists() else RunStore.create(run_dir, "{}", "h")
    space = GridSpace()
    seed_globals(0)
    driver = SeededRandom(2, *space.bounds, space.x0(), seed=3)
    loop = SearchLoop(
        store=store,
        space=space,
        driver=driver,
        evaluator=evaluator or Objective(),
        archive=Archive(run_dir, 3, _writer),
        budget=Budget(max_evals=max_evals),
        stop_event=stop_event,
        on_generation=on_generation,
    )
    loop.restore()
    return loop, store, driver


def test_dedupe_failures_order_and_archive(tmp_path):
    ev = Objective()
    loop, store, driver = _loop(tmp_path, 40, evaluator=ev)
    final = loop.run()
    trials = store.trials()
    assert final.stop_reason == "max_evals" and final.n_evals == 40
    assert max(ev.calls.values()) == 1  # no recipe evaluated twice
    reused = [t for t in trials if t.reused_from is not None]
    assert reused, "the 0.1 grid must produce repeats"
    for t in reused:
        src = store.trial(t.reused_from)
        assert src.digest == t.digest and src.fitness == t.fitness or math.isnan(t.fitness)
    assert [i for i, _ in driver.told] == [t.idx for t in trials]  # told in ask order
    failed = [t for t in trials if not t.ok]
    assert failed and all(math.isnan(f) for i, f in driver.told if store.trial(i).status == "FAIL")
    assert all("boom" in t.error for t in failed)
    ok = sorted((t for t in trials if t.ok), key=lambda t: (-t.fitness, t.idx))
    archive = store.archive()
    assert [e.digest for e in archive] == list(dict.fromkeys(t.digest for t in ok))[:3]
    on_disk = sorted(p.name for p in (tmp_path / "archive").iterdir())
    assert on_disk == sorted(e.digest for e in archive)
    assert store.counts()["evaluated"] == sum(ev.calls.values())


def test_stop_request_commits_the_generation(tmp_path):
    stop = threading.Event()
    seen = []

    def on_gen(p):
        seen.append(p.generation)
        if len(seen) == 2:
            stop.set()

    loop, store, _ = _loop(tmp_path, 1000, stop_event=stop, on_generation=on_gen)
    final = loop.run()
    assert final.stop_reason == "interrupted"
    assert store.last_checkpoint().generation == 1
    assert store.counts()["generations"] == 2


def test_resume_in_process_is_exact(tmp_path):
    full, store_full, _ = _loop(tmp_path / "full", 30)
    full.run()
    part, store_part, _ = _loop(tmp_path / "part", 12)
    part.run()
    store_part.close()
    rest, store_part, _ = _loop(tmp_path / "part", 30)
    assert rest.state.generation > 0
    rest.run()

    def key(store):
        return [
            (t.idx, t.digest, t.genes, t.status, t.fitness, t.reused_from) for t in store.trials()
        ]

    assert key(store_part) == key(store_full)
    assert store_part.archive() == store_full.archive()


def test_budget_without_ask_ahead_finishes_the_generation(tmp_path):
    SeededRandom.can_ask_ahead = False
    try:
        loop, store, _ = _loop(tmp_path, 8)
        final = loop.run()
    finally:
        SeededRandom.can_ask_ahead = True
    assert final.n_evals >= 8 and store.counts()["candidates"] % 6 == 0


def test_undecodable_candidate_is_a_failure(tmp_path):
    class Bad(GridSpace):
        def decode(self, x):
            if x[0] > 0.5:
                raise ValueError("gene out of range")
            return super().decode(x)

    loop, store, _ = _loop(tmp_path, 12)
    loop.space = Bad()
    loop.run()
    bad = [t for t in store.trials() if t.error and "decode failed" in t.error]
    assert bad and all(t.digest == "" and t.status == "FAIL" for t in bad)
