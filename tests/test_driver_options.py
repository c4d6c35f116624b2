"""driver.options: one parser for every driver, one error line per mistake, docs from the same
dataclass (evomerge.drivers.options)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from evomerge.config_reference import driver_options, render
from evomerge.drivers import get_driver, list_drivers
from evomerge.drivers.base import Driver, NoOptions, register_driver
from evomerge.drivers.options import option_help
from evomerge.errors import UserInputError

DIM = 4
# driver -> case -> (options, what the one error line must say besides the driver and the key)
CASES = {
    "cma_es": {
        "unknown": ({"sigma": 0.3}, "driver.options.sigma; valid: sigma0, popsize"),
        "type": ({"popsize": "8"}, "driver.options.popsize is '8' (str); it takes int or null"),
        "value": ({"popsize": 1}, "driver.options.popsize 1: must be >= 2"),
        "choice": ({"sigma_adaptation": "xnes"}, "valid: csa, tpa or null"),
    },
    "optuna": {
        "unknown": ({"n_trials": 5}, "driver.options.n_trials; valid: sampler, objectives"),
        "type": ({"batch_size": 2.5}, "driver.options.batch_size is 2.5 (float); it takes int"),
        "value": ({"objectives": 0}, "driver.options.objectives 0: must be >= 1"),
        "choice": ({"sampler": "cmaes"}, "driver.options.sampler 'cmaes': valid: tpe, nsga2"),
    },
    "random": {
        "unknown": ({"batchsize": 4}, "driver.options.batchsize; valid: batch_size, include_x0"),
        "type": ({"include_x0": "yes"}, "driver.options.include_x0 is 'yes' (str); it takes bool"),
        "value": ({"batch_size": 0}, "driver.options.batch_size 0: ask at least 1"),
    },
    "m2n2": {
        "unknown": ({"archive": 4}, "driver.options.archive; valid: init_points, archive_size"),
        "type": ({"alpha": True}, "driver.options.alpha is True (bool); it takes float"),
        "value": ({"archive_size": 1}, "driver.options.archive_size 1: must be >= 2"),
        "needs": ({"init": "given"}, "driver.options.init 'given': needs init_points"),
    },
    "frank_wolfe": {
        "missing": ({}, "driver.options.n_members (pool size (filled in from the space)) is"),
        "unknown": ({"n_members": 2, "stepsize": 1.0}, "driver.options.stepsize; valid:"),
        "type": ({"n_members": 2, "guard": 1}, "driver.options.guard is 1 (int); it takes bool"),
        "value": ({"n_members": 2, "variant": "hard"}, "'hard': valid: task_arithmetic, ties"),
    },
    "adamerging": {
        "missing": ({}, "driver.options.n_members (number of experts"),
        "unknown": ({"n_members": 2, "learning_rate": 0.1}, "driver.options.learning_rate;"),
        "type": (
            {"n_members": 2, "lr": "fast"},
            "driver.options.lr is 'fast' (str); it takes float",
        ),
        "value": ({"n_members": 2, "init": 2.0}, "driver.options.init 2.0: must be in [0, 1]"),
    },
}


def _build(name: str, options: dict) -> Driver:
    cls = get_driver(name)
    return cls(DIM, np.zeros(DIM), np.ones(DIM), np.full(DIM, 0.5), seed=0, **options)


@pytest.mark.parametrize(
    "name,case",
    [pytest.param(n, c, id=f"{n}-{c}") for n, cases in CASES.items() for c in cases],
)
def test_a_bad_option_is_one_line_naming_the_key_and_the_fix(name, case):
    options, says = CASES[name][case]
    with pytest.raises(UserInputError) as err:
        _build(name, options)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{name}: "), line
    assert says in line, line


def test_every_option_of_every_driver_is_checked_for_type():
    """Each field's annotation is one the parser checks: a string is refused for all of them
    (but for the str ones), so no option passes through unchecked."""
    for name in list_drivers():
        cls = get_driver(name).options_cls
        for f in dataclasses.fields(cls):
            if f.name == "n_members" or "str" in str(f.type):
                continue
            options = {"n_members": 2} if _needs_members(cls) else {}
            with pytest.raises(
                UserInputError, match=f"driver.options.{f.name} is 'x' \\(str\\); it takes"
            ):
                _build(name, {**options, f.name: "x"})


def _needs_members(cls: type) -> bool:
    return any(f.name == "n_members" for f in dataclasses.fields(cls))


def test_every_driver_declares_an_options_dataclass_and_its_docs_come_from_it():
    text = render()
    for name in list_drivers():
        cls = get_driver(name)
        opts = cls.options_cls
        assert opts is not NoOptions and dataclasses.is_dataclass(opts), name
        assert opts.__dataclass_params__.frozen, name
        helps = option_help(opts)
        assert all(helps.values()), (name, helps)
        rows = driver_options(cls)
        assert [r[0] for r in rows] == [k for k in helps if k != "n_members"], name
        for key, _, _, meaning in rows:
            assert meaning == helps[key]
            assert f"| `driver.options.{key}` |" in text and meaning in text, (name, key)


def test_a_driver_without_a_frozen_options_dataclass_is_refused_at_registration():
    @dataclasses.dataclass
    class Loose:
        size: int = 1

    class Sloppy(_Minimal):
        name = "sloppy"
        options_cls = Loose

    with pytest.raises(TypeError, match="Sloppy needs options_cls, a frozen dataclass"):
        register_driver(Sloppy)
    assert "sloppy" not in list_drivers()


def test_a_driver_without_options_refuses_any():
    with pytest.raises(
        UserInputError,
        match=r"^minimal: unknown driver.options.popsize; this driver takes no options$",
    ):
        _Minimal(DIM, np.zeros(DIM), np.ones(DIM), np.zeros(DIM), seed=0, popsize=3)


class _Minimal(Driver):
    name = "minimal"

    def ask(self, n=None):
        return []

    def tell(self, candidates, fitness, details=None):
        pass

    def stop(self):
        return True

    @property
    def best(self):
        return None

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
