"""Frank-Wolfe through the real search loop: SQLite store, serial evaluator, its fitness and
gradient (wants) jobs, and an interrupted-then-resumed run identical to an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.archive import Archive
from evomerge.drivers.frank_wolfe import FrankWolfe
from evomerge.fitness.result import EvalResult, TaskScore
from evomerge.io.lazy_checkpoint import Meter
from evomerge.loop import Budget, SearchLoop
from evomerge.rng_state import seed_globals
from evomerge.spaces.fw_pool import FWPoolSpace
from evomerge.store import RunStore
from evomerge.workers.pool_weights import build_theta
from evomerge.workers.serial import SerialEvaluator
from evomerge.zoo.digits import digits_correct, load_digits_model
from evomerge.zoo.digits_pool import TARGETS, build_digits_pool

PROXY = {"kind": "digits", "transform": list(TARGETS), "n": 48}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return build_digits_pool(tmp_path_factory.mktemp("fwloop"), n_irrelevant=4, hidden=32, epochs=4)


class DigitsContext:
    """A worker that builds each FW candidate by streaming the pool and scores 4 tasks."""

    worker, seed, tokenizer = "test", 0, None

    def __init__(self, space: FWPoolSpace) -> None:
        self.space = space
        self.model = load_digits_model(space.base)

    def materialize(self, recipe):
        theta = build_theta(self.space, self.space.genes_of(recipe), self.space.resolve, Meter())
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(theta[n])
        return self.model

    def score(self, model, tokenizer):
        res = EvalResult({t: TaskScore.from_examples(digits_correct(model, t)) for t in TARGETS})
        return res, res.aggregate(), ()


def _loop(run_dir, pool, budget, constraints=None):
    store = (
        RunStore.open(run_dir)
        if (run_dir / "store.sqlite").exists()
        else RunStore.create(run_dir, "{}", "h")
    )
    space = FWPoolSpace(pool.base, [*pool.relevant, *pool.irrelevant], variant="ties", iterations=4)
    seed_globals(0)
    driver = FrankWolfe.for_space(space, seed=0, lam=0.9, proxy=PROXY)
    loop = SearchLoop(
        store=store,
        space=space,
        driver=driver,
        evaluator=SerialEvaluator(DigitsContext(space)),
        archive=Archive(run_dir, 2, None),
        budget=budget,
        constraints=constraints,
    )
    loop.restore()
    return loop, store, driver


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, pool):
    """One uninterrupted FW search (theta_0 .. theta_4), shared by the tests below."""
    loop, store, driver = _loop(tmp_path_factory.mktemp("full"), pool, Budget(max_evals=50))
    return loop.run(), store, driver


def test_fw_search_loop_and_exact_resume(tmp_path, pool, full_run):
    final, store, driver = full_run
    assert final.stop_reason == "driver" and final.n_candidates == 5  # theta_0 .. theta_4
    full = store.trials()
    assert all(t.ok for t in full)
    hist = np.asarray(full[-1].genes)[driver.n_coef :].reshape(4, -1)
    assert (hist[:, 0] > 0).all()  # every iteration took a step

    run_dir = tmp_path / "resumed"
    loop1, _, _ = _loop(run_dir, pool, Budget(max_evals=50, max_candidates=2))
    assert loop1.run().stop_reason == "max_candidates"
    loop2, store2, driver2 = _loop(run_dir, pool, Budget(max_evals=50))  # a fresh process
    assert loop2.run().stop_reason == "driver"
    resumed = store2.trials()
    assert [(t.digest, t.fitness, t.genes) for t in resumed] == [
        (t.digest, t.fitness, t.genes) for t in full
    ]
    assert driver2.best[1] == driver.best[1] == max(t.fitness for t in full)
    assert store2.archive()[0].digest == store.archive()[0].digest


def test_a_constraint_filters_fw_iterates_but_never_steers_them(tmp_path, pool, full_run):
    """docs/fitness.md (Constraints, gradient drivers): FW is told ``-1e9 - violation`` for an
    infeasible iterate, which only its ``best`` reads; its steps follow the proxy gradient, so
    the iterates are those of the unconstrained run, and only feasible ones are archived."""
    from evomerge.fitness.config import parse_fitness_config
    from evomerge.fitness.constraints import Constraints

    plain = full_run[1].trials()
    bound = float(np.median([t.scores["rot90"] for t in plain]))  # cuts the run in two
    cfg = parse_fitness_config(
        {
            "tasks": [{"kind": "python", "function": "f.py:a"}],
            "constraints": [
                {"task": {"kind": "python", "function": "f.py:b", "name": "rot90"}, "min": bound}
            ],
        }
    )
    loop, store, driver = _loop(tmp_path, pool, Budget(max_evals=50), Constraints.of(cfg))
    assert loop.run().stop_reason == "driver"
    got = store.trials()
    assert [(t.genes, t.fitness) for t in got] == [(t.genes, t.fitness) for t in plain]
    feasible = {t.idx for t in got if t.scores["rot90"] >= bound}
    assert feasible and len(feasible) < len(got)
    assert store.archive() and {e.idx for e in store.archive()} <= feasible
    best_feasible = max(t.fitness for t in got if t.idx in feasible)
    assert driver.best[1] == store.archive()[0].fitness == best_feasible
