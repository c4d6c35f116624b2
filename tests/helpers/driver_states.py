"""Old checkpoints of the drivers, for tests/test_driver_state_compat.py.

``python -m tests.helpers.driver_states OUT.pkl`` (run with the code whose checkpoints are to be
kept loadable on ``PYTHONPATH``) plays a short scripted search with each driver, stops it with
candidates asked but not told, and writes the state dict there together with what that code then
asks after telling them. tests/data/driver_states_v1.pkl was written this way by the code before
M2N2 and random kept their state in frozen dataclasses (commit 7f81180); its ``POOL_CASES``
entries (frank_wolfe, FW-Soft, adamerging: state dict version 1, their own counter, pending and
best) were added by the code before those drivers kept them in the base's Ledger (commit
72da019). The file is written once: rewriting it with newer code would test nothing.
"""

from __future__ import annotations

import pickle
import sys

import numpy as np

from evomerge.drivers import get_driver
from evomerge.fitness.result import EvalResult, TaskScore
from evomerge.workers.gradient import Alignment

DIM = 3
# driver -> its options: small archives so the scripted search fills and replaces in a few steps
CASES = {
    "m2n2": {"archive_size": 4, "batch_size": 2, "mutation_std": 0.05},
    "random": {"batch_size": 3},
}


def make(name: str):
    cls = get_driver(name)
    return cls(DIM, np.zeros(DIM), np.ones(DIM), np.full(DIM, 0.5), seed=7, **CASES[name])


def scores(x: np.ndarray) -> tuple[list[float], list[EvalResult]]:
    """Fitness and per-example detail of one candidate: one example per gene."""
    row = 1.0 - np.abs(np.asarray(x) - np.array([0.2, 0.5, 0.8]))
    return float(row.mean()), EvalResult(tasks={"t": TaskScore.from_examples(row)})


def tell(driver, candidates) -> None:
    told = [scores(c.x) for c in candidates]
    driver.tell(candidates, [f for f, _ in told], [d for _, d in told])


def play(driver, generations: int) -> list:
    """Ask and tell ``generations`` times, then ask once more and leave that batch untold."""
    for _ in range(generations):
        tell(driver, driver.ask())
    return driver.ask()


def continuation(driver, pending, generations: int) -> list[np.ndarray]:
    """Tell the untold batch, then what the next asks propose (genes, asks in order)."""
    tell(driver, pending)
    out = []
    for _ in range(generations):
        cands = driver.ask()
        out += [c.x.copy() for c in cands]
        tell(driver, cands)
    return out


def record() -> dict:
    out = {}
    for name in CASES:
        driver = make(name)
        pending = play(driver, 5)
        state = pickle.loads(pickle.dumps(driver.state_dict()))
        out[name] = {"state": state, "then": continuation(driver, pending, 4)}
    return out


# ---- the pool gradient drivers: one candidate at a time, each wanting a gradient ----------------
MEMBERS, GROUPS = 2, 2
CENTER = np.array([0.2, 0.8, 0.3, 0.6])
# case -> (driver, options); the objective is never read: ``gradient`` answers for it
POOL_CASES = {
    "frank_wolfe": ("frank_wolfe", {"iterations": 12, "proxy": {"kind": "digits"}}),
    "frank_wolfe_soft": (
        "frank_wolfe",
        {"variant": "soft", "iterations": 4, "soft_steps": 3, "proxy": {"kind": "digits"}},
    ),
    "adamerging": (
        "adamerging",
        {"steps": 12, "lr": 0.05, "objective": {"kind": "digits", "transforms": ["flip"]}},
    ),
}


def make_pool(case: str):
    name, options = POOL_CASES[case]
    dim = MEMBERS * GROUPS
    lo, hi = np.zeros(dim), np.ones(dim)
    return get_driver(name)(dim, lo, hi, np.full(dim, 0.5), seed=7, n_members=MEMBERS, **options)


def gradient(x: np.ndarray) -> Alignment:
    """The alignment a pool job returns for the loss sum((w - CENTER)^2) over a pool whose base
    is 0 and whose task vectors are unit vectors (theta = the genes)."""
    w = np.asarray(x, dtype=float).reshape(GROUPS, MEMBERS)
    g = 2.0 * (w - CENTER.reshape(GROUPS, MEMBERS))
    return Alignment(
        tv_dots=g.T.copy(),
        tv_norms=np.ones_like(g.T),
        w_norms=np.ones_like(g.T),
        base_dots=np.zeros(GROUPS),
        theta_dots=(g * w).sum(axis=1),
        grad_norms=np.sqrt((g * g).sum(axis=1)),
        loss=float(np.sum((w - CENTER.reshape(GROUPS, MEMBERS)) ** 2)),
    )


def tell_pool(driver, cand, told: int) -> None:
    """Tell one candidate; every fourth tell fails (NaN, failed gradient) to move the retries."""
    fails = told % 4 == 3
    f = float("nan") if fails else -float(np.sum((cand.x - CENTER) ** 2))
    al = Alignment.failed("scripted failure") if fails else gradient(cand.x)
    driver.tell([cand], [f], wanted=[{"gradient": al} if cand.wants else {}])


def play_pool(driver, tells: int) -> list[np.ndarray]:
    """Ask and tell ``tells`` times, then ask once more and leave that candidate untold; the
    genes asked, in order."""
    asked = []
    for i in range(tells):
        (c,) = driver.ask()
        asked.append(c.x.copy())
        tell_pool(driver, c, i)
    asked.append(driver.ask()[0].x.copy())
    return asked


def continuation_pool(driver, tells: int, first: int) -> list:
    """Ask again (the untold candidate comes back), tell it, and go on to the driver's end:
    per ask, (index, genes, meta, whether it wants a gradient); then the best."""
    out = []
    for i in range(first, first + tells):
        cands = driver.ask()
        if not cands:
            break
        (c,) = cands
        out.append((c.index, c.x.copy(), dict(c.meta), sorted(c.wants)))
        tell_pool(driver, c, i)
    best = driver.best
    out.append(None if best is None else (best[0].index, best[0].x.copy(), best[1]))
    return out


def record_pool() -> dict:
    """Per case: the genes asked, the state with a candidate pending and what follows it, and
    the state once that candidate is told (what a store's checkpoint holds)."""
    out = {}
    for case in POOL_CASES:
        driver = make_pool(case)
        asked = play_pool(driver, 6)
        state = pickle.loads(pickle.dumps(driver.state_dict()))
        then = continuation_pool(driver, 40, 6)
        told = make_pool(case)
        play_pool(told, 6)
        continuation_pool(told, 1, 6)
        state_told = pickle.loads(pickle.dumps(told.state_dict()))
        out[case] = {"asked": asked, "state": state, "then": then, "state_told": state_told}
    return out


if __name__ == "__main__":
    with open(sys.argv[1], "wb") as f:
        pickle.dump({**record(), **record_pool()}, f)
