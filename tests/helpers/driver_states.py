"""Old checkpoints of the m2n2 and random drivers, for tests/test_driver_state_compat.py.

``python -m tests.helpers.driver_states OUT.pkl`` (run with the code whose checkpoints are to be
kept loadable on ``PYTHONPATH``) plays a short scripted search with each driver, stops it with
candidates asked but not told, and writes the state dict there together with what that code then
asks after telling them. tests/data/driver_states_v1.pkl was written this way by the code before
M2N2 and random kept their state in frozen dataclasses (commit 7f81180).
"""

from __future__ import annotations

import pickle
import sys

import numpy as np

from evomerge.drivers import get_driver
from evomerge.fitness.result import EvalResult, TaskScore

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


if __name__ == "__main__":
    with open(sys.argv[1], "wb") as f:
        pickle.dump(record(), f)
