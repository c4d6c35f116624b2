"""AdaMerging on real tiny models: entropy goes down on the digits zoo, layer-wise has one
coefficient per tensor and expert, the state round-trips exactly, the merge it reports is
plain task arithmetic with its lambda, bad input is rejected, the LM objective works on a
tiny Llama, and its gradient jobs run on Ray workers with the serial result (the driver
conformance suite runs it on a sphere too)."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from evomerge.drivers import get_driver
from evomerge.drivers.adamerging import AdaMerging
from evomerge.drivers.base import Candidate
from evomerge.errors import UserInputError
from evomerge.fitness.entropy_loss import EntropyObjective
from evomerge.merge.engine import run_merge
from evomerge.spaces.fw_pool import FWPoolSpace
from evomerge.workers.gradient import Alignment, GradientRequest
from evomerge.workers.gradient_job import objective_at, run_gradient_job
from evomerge.workers.gradient_runner import run_adamerging

TRANSFORMS = ["rot180", "flip", "invert", "roll"]
OBJ = {"kind": "digits", "transforms": TRANSFORMS, "n": 16}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models: a second OpenMP thread only fights other processes for the 2 CI cores
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def zoo():
    from evomerge.zoo.build import build

    return build("digits", quick=True, progress=False)  # cached by config hash


def _space(zoo, granularity="layer"):
    experts = [str(zoo / f"expert_{t}") for t in TRANSFORMS]
    return FWPoolSpace(str(zoo / "base"), experts, granularity=granularity)


def _driver(space, **opts):
    return AdaMerging.for_space(space, seed=0, **{"objective": OBJ, "steps": 30, **opts})


def _mean_entropy(space, x, obj=OBJ):
    spec = EntropyObjective.parse(obj)
    return float(np.mean([objective_at(space, x, spec, 10_000 + s) for s in range(4)]))


def _step(space, drv, fitness=0.0):
    (c,) = drv.ask()
    req = c.wants.get("gradient")
    al = None if req is None else run_gradient_job(space, req)
    drv.tell([c], [fitness], wanted=[{"gradient": al} if al else {}])
    return c


def test_entropy_decreases_on_digits(zoo):
    space = _space(zoo)
    drv = _driver(space, lr=1e-2)
    x0 = drv.ask()[0].x
    steps = run_adamerging(space, drv)
    assert drv.stop() and len(steps) == 31 and all(s.ok for s in steps)
    assert drv.state.t == 30 and len(drv.state.losses) == 30
    before, after = _mean_entropy(space, x0), _mean_entropy(space, drv.coefficients.reshape(-1))
    assert after < before - 0.05, (before, after)
    assert np.mean(drv.state.losses[-5:]) < np.mean(drv.state.losses[:5])
    lam = drv.coefficients
    assert lam.min() >= 0.0 and lam.max() <= 1.0 and not np.allclose(lam, 0.3)


def test_layer_wise_and_task_wise_coefficient_counts(zoo):
    task, layer = _space(zoo, "task"), _space(zoo, "layer")
    n_tensors = len(load_file(str(zoo / "base" / "model.safetensors")))
    assert n_tensors == 4  # hidden/head weight and bias
    dt, dl = _driver(task), _driver(layer)
    assert (task.dim, dt.n_groups, dt.coefficients.shape) == (4, 1, (1, 4))
    assert (layer.dim, dl.n_groups, dl.coefficients.shape) == (16, n_tensors, (n_tensors, 4))
    np.testing.assert_array_equal(dt.ask()[0].x, np.full(4, 0.3))  # the paper's init
    for _ in range(3):
        _step(layer, dl)
    assert len(set(np.round(dl.coefficients, 12).reshape(-1))) > 4  # each tensor moves apart


def test_state_dict_round_trip_resumes_exactly(zoo):
    space = _space(zoo)
    a = _driver(space)
    for _ in range(4):
        _step(space, a, fitness=float(np.random.rand()))
    b = _driver(space)
    b.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    for _ in range(3):
        ca, cb = a.ask(), b.ask()
        assert [c.index for c in ca] == [c.index for c in cb] and ca[0].meta == cb[0].meta
        np.testing.assert_array_equal(ca[0].x, cb[0].x)
        _step(space, a)
        _step(space, b)
    np.testing.assert_array_equal(a.state.lam, b.state.lam)
    np.testing.assert_array_equal(a.state.losses, b.state.losses)
    assert a.best[1] == b.best[1]
    other = _driver(space, lr=5e-3)
    with pytest.raises(UserInputError, match="other driver options"):
        other.load_state_dict(a.state_dict())


def test_reported_merge_is_task_arithmetic_with_its_lambda(zoo, tmp_path):
    space = _space(zoo)
    drv = _driver(space, steps=5, lr=5e-2)
    run_adamerging(space, drv)
    lam = drv.coefficients
    run_merge(space.decode(lam.reshape(-1)), tmp_path / "merged")  # the merge engine
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    base = load_file(str(zoo / "base" / "model.safetensors"))
    experts = [load_file(str(zoo / f"expert_{t}" / "model.safetensors")) for t in TRANSFORMS]
    for g, name in enumerate(space.tensors):  # layer-wise: group g is tensor g
        want = base[name].double()
        for k, ex in enumerate(experts):
            want = want + float(lam[g, k]) * (ex[name].double() - base[name].double())
        torch.testing.assert_close(merged[name].double(), want, rtol=0, atol=1e-6)


def test_gradient_matches_finite_differences(zoo):
    space = _space(zoo, "task")
    spec = EntropyObjective.parse(OBJ)
    x = np.array([0.3, 0.5, 0.2, 0.4])
    al = run_gradient_job(space, _request(x, spec))
    h = 1e-3
    for k in range(4):
        e = np.eye(4)[k] * h
        fd = (objective_at(space, x + e, spec, 0) - objective_at(space, x - e, spec, 0)) / (2 * h)
        assert al.tv_dots[k, 0] == pytest.approx(fd, rel=0.02, abs=1e-4)
    streamed = run_gradient_job(space, _request(x, spec, stream=True))
    np.testing.assert_allclose(streamed.tv_dots, al.tv_dots, rtol=1e-9)
    assert streamed.loss == al.loss


def _request(x, objective, stream=False):
    return GradientRequest(0, x, objective, step=0, stream=stream)


def test_failures_nan_and_bounds(zoo):
    space = _space(zoo, "task")
    drv = _driver(space, max_retries=1)
    (c,) = drv.ask()
    drv.tell([c], [math.nan], wanted=[{"gradient": Alignment.failed("boom")}])
    assert drv.best is None and drv.state.t == 0 and not drv.stop()
    (c2,) = drv.ask()  # a failed gradient repeats the same coefficients
    assert c2.index == c.index + 1 and np.array_equal(c2.x, c.x)
    drv.tell([c2], [1.0], wanted=[{}])
    assert drv.stop() and "gradient failed 2 times" in drv.stop_reason
    assert drv.best[1] == 1.0 and drv.ask() == []
    hi = _driver(space, init=1.0, lr=0.5)
    for _ in range(3):
        c = _step(space, hi)
        assert np.all(c.x >= 0) and np.all(c.x <= 1)


def test_bad_input_is_rejected(zoo):
    space = _space(zoo, "task")
    cls = get_driver("adamerging")
    assert cls is AdaMerging
    with pytest.raises(UserInputError, match="unknown driver.options"):
        _driver(space, learning_rate=1e-3)
    with pytest.raises(UserInputError, match="objective"):
        AdaMerging.for_space(space, seed=0)
    with pytest.raises(UserInputError, match="transforms"):
        _driver(space, objective={"kind": "digits", "transforms": ["rot45"]})
    with pytest.raises(UserInputError, match="unknown key"):
        _driver(space, objective={**OBJ, "labels": True})
    with pytest.raises(UserInputError, match="init"):
        _driver(space, init=1.5)
    with pytest.raises(UserInputError, match="variant"):
        AdaMerging.for_space(FWPoolSpace(space.base, space.members, variant="ties"), objective=OBJ)
    with pytest.raises(UserInputError, match="groups x 4 experts"):
        AdaMerging(6, np.zeros(6), np.ones(6), np.zeros(6), seed=0, n_members=4, objective=OBJ)
    drv = _driver(space)
    (c,) = drv.ask()
    with pytest.raises(UserInputError):
        drv.tell([c], [0.0, 1.0])
    with pytest.raises(UserInputError):
        drv.tell([c], [None])
    with pytest.raises(UserInputError, match="genes differ"):
        drv.tell([Candidate(c.index, c.x + 0.1)], [0.0])
    with pytest.raises(UserInputError, match="shape"):
        wrong = run_gradient_job(_space(zoo, "layer"), _request(np.full(16, 0.3), drv.objective))
        drv.tell([c], [0.0], wanted=[{"gradient": wrong}])
    _step(space, drv)
    with pytest.raises(UserInputError, match="already told"):
        drv.tell([c], [0.0])


def test_lm_objective_on_a_tiny_llama(tmp_path):
    from evomerge.zoo.lm import LMShape, new_model, save_lm
    from evomerge.zoo.tokenizer import build_tokenizer

    tok = build_tokenizer()
    shape = LMShape(layers=2, hidden=32, intermediate=64, heads=4, max_positions=32)
    base = new_model(shape, len(tok), seed=0)
    save_lm(base, tok, tmp_path / "base")
    members = []
    for i in range(2):  # experts = base + a seeded perturbation
        expert, gen = copy.deepcopy(base), torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in expert.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
        save_lm(expert, tok, tmp_path / f"e{i}")
        members.append(str(tmp_path / f"e{i}"))
    obj = {"kind": "lm", "tasks": ["zoo_copy", "zoo_reverse"], "n": 8, "answer_tokens": 4}
    space = FWPoolSpace(str(tmp_path / "base"), members, granularity="task")
    drv = AdaMerging.for_space(space, objective=obj, steps=8, lr=5e-2)
    x0 = drv.ask()[0].x
    steps = run_adamerging(space, drv)
    assert all(s.ok and math.isfinite(s.loss) for s in steps)
    assert _mean_entropy(space, drv.coefficients.reshape(-1), obj) < _mean_entropy(space, x0, obj)


class _DigitsWorker:
    """Scores each candidate's merge (built from its genes) on the four transforms."""

    worker, seed, tokenizer = "test", 0, None

    def __init__(self, space: FWPoolSpace) -> None:
        from evomerge.zoo.digits import load_digits_model

        self.space, self.model = space, load_digits_model(space.base)

    def materialize(self, recipe):
        from evomerge.io.lazy_checkpoint import Meter
        from evomerge.workers.pool_weights import build_theta

        theta = build_theta(self.space, self.space.genes_of(recipe), self.space.resolve, Meter())
        self.model.load_state_dict(theta)
        return self.model

    def score(self, model, tokenizer):
        from evomerge.fitness.result import EvalResult, TaskScore
        from evomerge.zoo.digits import digits_correct

        res = EvalResult({t: TaskScore.from_examples(digits_correct(model, t)) for t in TRANSFORMS})
        return res, res.aggregate(), ()


def _loop(run_dir, zoo, budget, evaluator=None, constraints=None):
    from evomerge.archive import Archive
    from evomerge.loop import SearchLoop
    from evomerge.rng_state import seed_globals
    from evomerge.store import RunStore
    from evomerge.workers.serial import SerialEvaluator

    exists = (run_dir / "store.sqlite").exists()
    store = RunStore.open(run_dir) if exists else RunStore.create(run_dir, "{}", "h")
    space = _space(zoo, "task")
    seed_globals(0)
    driver = _driver(space, steps=5)
    loop = SearchLoop(
        store=store,
        space=space,
        driver=driver,
        evaluator=evaluator or SerialEvaluator(_DigitsWorker(space)),
        archive=Archive(run_dir, 2, None),
        budget=budget,
        constraints=constraints,
    )
    loop.restore()
    return loop, store, driver


def test_search_loop_serves_the_gradient_and_resumes_exactly(zoo, tmp_path):
    from evomerge.loop import Budget

    loop, store, driver = _loop(tmp_path / "full", zoo, Budget(max_evals=50))
    assert loop.run().stop_reason == "driver"
    full = store.trials()
    assert len(full) == 6 and all(t.ok for t in full) and driver.state.t == 5
    loop1, _, _ = _loop(tmp_path / "resumed", zoo, Budget(max_evals=50, max_candidates=3))
    assert loop1.run().stop_reason == "max_candidates"
    loop2, store2, driver2 = _loop(tmp_path / "resumed", zoo, Budget(max_evals=50))
    assert loop2.run().stop_reason == "driver"
    key = [(t.digest, t.fitness, t.genes) for t in full]
    assert [(t.digest, t.fitness, t.genes) for t in store2.trials()] == key
    np.testing.assert_array_equal(driver2.state.lam, driver.state.lam)
    assert driver2.best[1] == max(t.fitness for t in full)


def test_a_constraint_filters_iterates_but_never_steers_them(zoo, tmp_path):
    """docs/fitness.md (Constraints, gradient drivers): AdaMerging's steps follow the entropy
    gradient, not the told value, so a constrained run has the unconstrained run's iterates and
    only its feasible ones are archived."""
    from evomerge.fitness.config import parse_fitness_config
    from evomerge.fitness.constraints import Constraints
    from evomerge.loop import Budget

    loop0, plain_store, _ = _loop(tmp_path / "plain", zoo, Budget(max_evals=50))
    assert loop0.run().stop_reason == "driver"
    plain = plain_store.trials()
    task = TRANSFORMS[1]
    bound = float(np.median([t.scores[task] for t in plain]))
    cfg = parse_fitness_config(
        {
            "tasks": [{"kind": "python", "function": "f.py:a"}],
            "constraints": [
                {"task": {"kind": "python", "function": "f.py:b", "name": task}, "min": bound}
            ],
        }
    )
    loop, store, driver = _loop(
        tmp_path / "bound", zoo, Budget(max_evals=50), None, Constraints.of(cfg)
    )
    assert loop.run().stop_reason == "driver"
    got = store.trials()
    assert [(t.genes, t.fitness) for t in got] == [(t.genes, t.fitness) for t in plain]
    feasible = {t.idx for t in got if t.scores[task] >= bound}
    assert feasible and len(feasible) < len(got)
    assert store.archive() and {e.idx for e in store.archive()} <= feasible


class _MergingDigitsWorker(_DigitsWorker):
    """Builds each candidate from its recipe with the merge engine, as a search worker does:
    the recipe travels to the worker process, not the genes the driver's space decoded."""

    def materialize(self, recipe):
        from evomerge.merge.engine import iter_merged_tensors
        from evomerge.merge.plan import plan

        merged = iter_merged_tensors(plan(recipe, resolver=self.space.resolve), prefetch=0)
        self.model.load_state_dict(dict(merged))
        return self.model


def _digits_factory(space):
    """A Ray worker factory for ``_MergingDigitsWorker`` (built in each worker process, named
    with its pid so a test can tell who answered)."""
    from evomerge.workers.ray_actor import WorkerFactory

    class DigitsFactory(WorkerFactory):
        def shared_models(self) -> list[str]:
            return []  # the worker reads the pool itself

        def build(self, cache, placement, worker):
            import os

            torch.set_num_threads(1)  # the serial run's arithmetic
            ctx = _MergingDigitsWorker(space)
            ctx.worker = f"{worker} pid {os.getpid()}"
            return ctx

    return DigitsFactory()


def test_gradient_jobs_run_on_ray_workers_and_equal_serial(zoo, tmp_path):
    """AdaMerging through the loop on 2 local Ray workers (loopback): every entropy gradient is a
    wants job the workers answer, and the search equals the serial one, step for step."""
    import os

    from evomerge.loop import Budget
    from evomerge.workers.ray_evaluator import RayEvaluator
    from evomerge.workers.serial import SerialEvaluator

    space = _space(zoo, "task")
    here = SerialEvaluator(_MergingDigitsWorker(space))
    serial_loop, serial_store, serial = _loop(tmp_path / "serial", zoo, Budget(max_evals=50), here)
    assert serial_loop.run().stop_reason == "driver"
    ray_ev = RayEvaluator(_digits_factory(space), num_workers=2, threads=1)
    try:
        loop, store, driver = _loop(tmp_path / "ray", zoo, Budget(max_evals=50), ray_ev)
        assert loop.run().stop_reason == "driver"
        # one more wants job, asked directly: a worker process answers it, not this one
        x = driver.coefficients.reshape(-1)
        request = GradientRequest(99, x, driver.objective, step=driver.state.t)
        (res,) = ray_ev.evaluate_wants([space.decode(x)], [{"gradient": request}])
    finally:
        ray_ev.close()
    assert res.ok and res.wanted["gradient"].ok
    assert " pid " in res.worker and not res.worker.endswith(f" pid {os.getpid()}")
    key = [(t.digest, t.fitness, t.genes) for t in serial_store.trials()]
    assert len(key) == 6 and all(t.ok for t in serial_store.trials())
    assert [(t.digest, t.fitness, t.genes) for t in store.trials()] == key
    assert all(" pid " in t.worker for t in store.trials())
    assert not any(t.worker.endswith(f" pid {os.getpid()}") for t in store.trials())
    # the entropies each Adam step started from came back from the workers' gradient jobs
    assert len(driver.state.losses) == 5 and np.all(np.isfinite(driver.state.losses))
    np.testing.assert_array_equal(driver.state.losses, serial.state.losses)
    np.testing.assert_array_equal(driver.state.lam, serial.state.lam)
