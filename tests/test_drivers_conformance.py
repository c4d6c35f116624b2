"""One conformance suite over every registered driver (optuna's StorageTestCase idea)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from evomerge.drivers import get_driver, list_drivers
from evomerge.errors import UserInputError
from evomerge.workers.gradient import Alignment

DIM = 4
CENTER = np.array([0.2, 0.8, 0.3, 0.6])
# every driver: black-box ones see only the fitness; the gradient drivers (frank_wolfe,
# adamerging) also want the sphere's gradient, which ``answer`` computes as a worker job would
DRIVERS = list_drivers()
# their steps follow the gradient from a fixed start: the seed never enters
SEEDLESS = {"frank_wolfe", "adamerging"}
MEMBERS = 2  # their pool: two members x two tensor groups (DIM genes)
OPTIONS = {
    "cma_es": {"popsize": 6},
    "random": {"batch_size": 6},
    "optuna": {"batch_size": 6},
    "m2n2": {},
    # the objective is never read here: ``answer`` gives the sphere's gradient
    "frank_wolfe": {"n_members": MEMBERS, "iterations": 40, "proxy": {"kind": "digits"}},
    "adamerging": {
        "n_members": MEMBERS,
        "steps": 60,
        "lr": 0.05,
        "objective": {"kind": "digits", "transforms": ["flip"]},
    },
}


def make(name: str, seed: int = 0):
    cls = get_driver(name)
    lo, hi = np.zeros(DIM), np.ones(DIM)
    return cls(DIM, lo, hi, np.full(DIM, 0.5), seed=seed, **OPTIONS.get(name, {}))


def sphere(x: np.ndarray) -> float:
    return -float(np.sum((x - CENTER) ** 2))


def answer(request) -> Alignment:
    """The gradient of the loss -sphere at the request's genes, reduced to the alignment a pool
    gradient job returns, for a pool whose base is 0 and whose task vectors are the unit vectors
    (theta = the genes, member k of group G = unit vector (G, k))."""
    w = np.asarray(request.x, dtype=float).reshape(-1, MEMBERS)
    g = 2.0 * (w - CENTER.reshape(-1, MEMBERS))
    return Alignment(
        tv_dots=g.T.copy(),  # <g_G, tau_kG> = g[G, k]
        tv_norms=np.ones_like(g.T),
        w_norms=np.ones_like(g.T),  # ||base + tau_k|| per group
        base_dots=np.zeros(len(g)),
        theta_dots=(g * w).sum(axis=1),
        grad_norms=np.sqrt((g * g).sum(axis=1)),
        loss=-sphere(w.reshape(-1)),
    )


def tell(driver, cands, fit) -> None:
    """Tell as the loop does: with ``wanted`` when a candidate wants something."""
    if not any(c.wants for c in cands):
        driver.tell(cands, fit)
        return
    assert all(set(c.wants) <= {"gradient"} for c in cands)
    wanted = [{k: answer(r) for k, r in c.wants.items()} for c in cands]
    driver.tell(cands, fit, wanted=wanted)


def run(driver, evals: int, fail_every: int = 0) -> list[float]:
    seen = []
    while len(seen) < evals and not driver.stop():
        cands = driver.ask()
        fit = [sphere(c.x) for c in cands]
        if fail_every:
            fit = [math.nan if (c.index % fail_every == 0) else f for c, f in zip(cands, fit)]
        tell(driver, cands, fit)
        seen += fit
    return seen


@pytest.mark.parametrize("name", DRIVERS)
def test_sphere_improves(name):
    d = make(name)
    seen = run(d, 150)
    first = np.nanmax(seen[:6])
    cand, best = d.best
    assert best > first + 0.02 or best > -0.01, (name, first, best)
    assert best == pytest.approx(sphere(cand.x))


@pytest.mark.parametrize("name", DRIVERS)
def test_nan_is_failure(name):
    d = make(name)
    run(d, 40, fail_every=3)
    cand, best = d.best
    assert math.isfinite(best) and cand.index % 3 != 0


@pytest.mark.parametrize("name", DRIVERS)
def test_state_dict_round_trip_gives_identical_asks(name):
    a = make(name)
    run(a, 24)
    state = pickle.loads(pickle.dumps(a.state_dict()))
    b = make(name, seed=123)  # a fresh instance; its own seed must not matter after the load
    b.load_state_dict(state)
    for _ in range(3):
        ca, cb = a.ask(), b.ask()
        assert [c.index for c in ca] == [c.index for c in cb]
        for x, y in zip(ca, cb):
            np.testing.assert_array_equal(x.x, y.x)
        fit = [sphere(c.x) for c in ca]
        tell(a, ca, fit)
        tell(b, cb, fit)


@pytest.mark.parametrize("name", DRIVERS)
def test_global_numpy_rng_does_not_leak_in(name):
    a, b = make(name), make(name)
    np.random.seed(1)
    xa = [c.x for c in a.ask()]
    np.random.seed(2)
    xb = [c.x for c in b.ask()]
    for x, y in zip(xa, xb):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", DRIVERS)
def test_seeds(name):
    if name in SEEDLESS:
        runs = [run(make(name, seed), 12) for seed in (0, 1)]
        assert runs[0] == runs[1] and len(runs[0]) == 12
        return
    xa = [c.x for c in make(name, 0).ask(6)][1:]  # first may be x0 for some drivers
    xb = [c.x for c in make(name, 0).ask(6)][1:]
    xc = [c.x for c in make(name, 1).ask(6)][1:]
    assert all(np.array_equal(x, y) for x, y in zip(xa, xb))
    assert not all(np.array_equal(x, y) for x, y in zip(xa, xc))


@pytest.mark.parametrize("name", DRIVERS)
def test_batch_size_is_what_ask_returns(name):
    """The loop sizes an ask-ahead driver's asks by ``batch_size`` (never guessing from other
    attributes): it must be stated by such a driver, and ``ask(n)`` must return n."""
    d = make(name)
    if d.can_ask_ahead:
        assert d.batch_size is not None and d.batch_size >= 1
        cands = d.ask(2)
        assert len(cands) == 2
        tell(d, cands, [sphere(c.x) for c in cands])
    if d.batch_size is not None:
        assert len(d.ask()) == d.batch_size


@pytest.mark.parametrize("name", DRIVERS)
def test_within_bounds(name):
    d = make(name)
    for _ in range(5):
        cands = d.ask()
        for c in cands:
            assert np.all(c.x >= 0) and np.all(c.x <= 1)
        tell(d, cands, [sphere(c.x) for c in cands])


@pytest.mark.parametrize("name", DRIVERS)
def test_tell_rejects_bad_input(name):
    d = make(name)
    cands = d.ask()
    with pytest.raises(UserInputError):
        d.tell(cands, [0.0] * (len(cands) + 1))
    with pytest.raises(UserInputError):
        d.tell(cands, [None] * len(cands))
    tell(d, cands, [sphere(c.x) for c in cands])
    with pytest.raises(UserInputError):
        tell(d, cands, [0.0] * len(cands))  # already told
    assert d.ask(1)[0].index == cands[-1].index + 1


def test_unknown_driver_lists_valid_names():
    with pytest.raises(UserInputError, match="cma_es"):
        get_driver("cmaes")


def test_optuna_multi_objective():
    cls = get_driver("optuna")
    d = cls(DIM, np.zeros(DIM), np.ones(DIM), np.full(DIM, 0.5), seed=0, objectives=2, batch_size=4)
    for _ in range(3):
        cands = d.ask()
        d.tell(cands, [(sphere(c.x), -float(c.x.sum())) for c in cands])
    # NSGA-II's state round-trips (optuna 5's sampler holds a lock pickle refuses)
    twin = cls(DIM, np.zeros(DIM), np.ones(DIM), np.full(DIM, 0.5), seed=0, objectives=2)
    twin.load_state_dict(d.state_dict())
    assert np.array_equal([c.x for c in twin.ask(4)], [c.x for c in d.ask(4)])
    with pytest.raises(UserInputError, match="objective"):
        cands = d.ask(1)
        d.tell(cands, [1.0])


def test_cma_es_crosses_a_flat_start():
    """Exact-match fitness is often 0 for every candidate of the first generations; CMA-ES must
    widen its search there instead of stopping (pycma's tolfun/tolflatfitness would stop it)."""
    cls = get_driver("cma_es")
    d = cls(4, np.zeros(4), np.ones(4), np.full(4, 0.5), seed=0, popsize=6, sigma0=0.05)
    best, gens = 0.0, 0
    while not d.stop() and gens < 200 and best < 1.0:
        cands = d.ask()
        fit = [1.0 if c.x[0] > 0.8 else 0.0 for c in cands]  # a plateau with one way up
        d.tell(cands, fit)
        best, gens = max(best, *fit), gens + 1
    assert gens > 1 and best == 1.0


def test_cma_es_step_size_rule_and_frozen_covariance():
    """sigma_adaptation overrides pycma's choice, which is TPA from 300 dimensions up (the M2N2
    digits baseline needs the CSA of the paper's pycma); adapt_covariance=False keeps the search
    isotropic where a learned covariance stretches along an ill-conditioned ellipsoid."""
    cls = get_driver("cma_es")
    inf = np.full(300, np.inf)
    rules = {}
    for rule in (None, "csa", "tpa"):
        d = cls(300, -inf, inf, np.zeros(300), seed=0, popsize=10, sigma_adaptation=rule)
        rules[rule] = type(d._es.adapt_sigma).__name__
    assert rules == {None: "CMAAdaptSigmaTPA", "csa": "CMAAdaptSigmaCSA", "tpa": "CMAAdaptSigmaTPA"}
    with pytest.raises(UserInputError, match="sigma_adaptation"):
        cls(4, np.zeros(4), np.ones(4), np.full(4, 0.5), seed=0, sigma_adaptation="msr")
    scale = np.logspace(0, 3, 8)
    spread = {}
    for adapt in (True, False):
        d = cls(8, -inf[:8], inf[:8], np.ones(8), seed=0, sigma0=0.1, adapt_covariance=adapt)
        for _ in range(60):
            cands = d.ask()
            d.tell(cands, [-float(np.sum((scale * c.x) ** 2)) for c in cands])
        stds = d._es.stds
        spread[adapt] = stds.max() / stds.min()
    assert spread[False] == pytest.approx(1.0, rel=1e-3) and spread[True] > 10
