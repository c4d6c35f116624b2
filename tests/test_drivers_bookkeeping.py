"""The ask counter, pending and best hold for every registered driver (the base's ledger):
indices go up by one, a tell of a candidate not pending is one
clear error that changes nothing, and ``best`` is the best told value."""

from __future__ import annotations

import math

import pytest

from evomerge.drivers.base import Candidate
from evomerge.errors import UserInputError
from tests.test_drivers_conformance import DRIVERS, make, sphere, tell


def _play(driver, rounds: int, fail_every: int = 0) -> tuple[list[int], list[float]]:
    """Ask and tell ``rounds`` times; the asked indices and the told values, in order."""
    indices, told = [], []
    for _ in range(rounds):
        cands = driver.ask()
        fit = [sphere(c.x) for c in cands]
        if fail_every:
            fit = [math.nan if c.index % fail_every == 0 else f for c, f in zip(cands, fit)]
        tell(driver, cands, fit)
        indices += [c.index for c in cands]
        told += fit
    return indices, told


@pytest.mark.parametrize("name", DRIVERS)
def test_indices_go_up_by_one_across_asks(name):
    d = make(name)
    indices, _ = _play(d, 4)
    assert indices == list(range(len(indices))) and len(indices) >= 4
    if d.can_ask_ahead:  # asked again before the tell: the counter goes on, nothing repeats
        first, second = d.ask(2), d.ask(3)
        got = [c.index for c in first + second]
        assert got == list(range(len(indices), len(indices) + 5))


@pytest.mark.parametrize("name", DRIVERS)
def test_a_tell_of_a_candidate_not_pending_is_one_clear_error(name):
    d = make(name)
    cands = d.ask()
    stranger = Candidate(10**6, cands[0].x.copy())
    with pytest.raises(UserInputError) as unknown:
        tell(d, [stranger], [0.0])
    fit = [sphere(c.x) for c in cands]
    tell(d, cands, fit)
    with pytest.raises(UserInputError) as again:
        tell(d, cands[:1], fit[:1])
    for err, index in ((unknown, stranger.index), (again, cands[0].index)):
        line = str(err.value)
        assert "\n" not in line and line.startswith(f"{name}.tell: candidate {index} ")
        assert "told" in line  # says what is wrong: not asked, or already told
    # neither refused tell moved the counter: the next ask follows the told batch
    assert d.ask()[0].index == cands[-1].index + 1


@pytest.mark.parametrize("name", DRIVERS)
def test_best_is_the_best_told_value(name):
    d = make(name)
    assert d.best is None  # nothing told yet
    indices, told = _play(d, 6, fail_every=4)
    cand, value = d.best
    ok = [(f, i) for i, f in zip(indices, told) if not math.isnan(f)]
    assert value == max(f for f, _ in ok)
    # the first candidate told that value (a tie keeps the earlier one)
    assert cand.index == next(i for f, i in ok if f == value)
    assert value == sphere(cand.x)
