"""M2N2 and random keep their state in frozen dataclasses; checkpoints written before that still
resume exactly (tests/data/driver_states_v1.pkl, from tests/helpers/driver_states.py)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.driver_states import CASES, continuation, make, play, record

OLD = pickle.loads((Path(__file__).parent / "data" / "driver_states_v1.pkl").read_bytes())


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and _same(dataclasses.asdict(a), dataclasses.asdict(b))
    return a == b


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_old_checkpoint_resumes_as_the_old_code_would(name):
    old = OLD[name]
    driver = make(name)
    driver.load_state_dict(old["state"])
    assert _same(driver.state_dict(), old["state"])  # same keys, same values
    pending = list(old["state"]["pending"].values())
    then = continuation(driver, pending, 4)
    assert len(then) == len(old["then"]) > 0
    assert all(np.array_equal(a, b) for a, b in zip(then, old["then"]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_same_script_asks_what_the_old_code_asked(name):
    assert _same(record()[name], OLD[name])


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_is_frozen_and_replaced_not_mutated(name):
    driver = make(name)
    assert dataclasses.is_dataclass(driver.state)
    assert type(driver.state).__dataclass_params__.frozen
    pending = play(driver, 2)
    before = driver.state
    snapshot = pickle.loads(pickle.dumps(driver.state_dict()))
    continuation(driver, pending, 3)
    assert driver.state is not before
    assert _same(before, type(before)(**snapshot))  # the old state object was left as it was
