"""Search drivers behind one ask/tell contract (``evomerge.drivers.base.Driver``).

Built-ins are imported on first lookup, so ``import evomerge`` does not import cma or optuna.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from evomerge.drivers.base import DRIVERS, Candidate, Driver, register_driver
from evomerge.errors import UserInputError

# name -> module that registers it (imported lazily: cma/optuna are optional extras)
BUILTIN_DRIVERS = {
    "cma_es": "evomerge.drivers.cma_es",
    "optuna": "evomerge.drivers.optuna_sampler",
    "random": "evomerge.drivers.random_search",
    "m2n2": "evomerge.drivers.m2n2",
    "frank_wolfe": "evomerge.drivers.frank_wolfe",
    "adamerging": "evomerge.drivers.adamerging",
}


def list_drivers() -> list[str]:
    present = {n for n, mod in BUILTIN_DRIVERS.items() if importlib.util.find_spec(mod)}
    return sorted(present | set(DRIVERS))


def get_driver(name: str) -> type[Driver]:
    if name not in DRIVERS and name in list_drivers():
        try:
            importlib.import_module(BUILTIN_DRIVERS[name])
        except ModuleNotFoundError as err:
            raise UserInputError(
                f"driver {name!r} needs the package {err.name!r}: pip install 'evomerge[search]'"
            ) from None
    if name not in DRIVERS:
        from evomerge.config_keys import valid_names

        raise UserInputError(f"driver: unknown name {name!r}; {valid_names(name, list_drivers())}")
    return DRIVERS[name]


def check_fit(name: str, space: Any) -> None:
    """Refuse a driver that cannot search this space (a ``SpaceConfig``), naming what fits."""
    reason = get_driver(name).misfit(space)
    if reason is None:
        return
    fitting = [n for n in list_drivers() if n != name and _fits(n, space)]
    what = f"space kind {space.kind!r}"
    if space.kind == "fw_pool":
        what += f" (variant {space.variant})"
    raise UserInputError(
        f"driver {name!r} does not fit {what}: {reason}; "
        f"for this space use driver {_either(fitting)}"
    )


def _either(names: list[str]) -> str:
    if not names:
        return "none (change the space)"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _fits(name: str, space: Any) -> bool:
    try:
        return get_driver(name).misfit(space) is None
    except UserInputError:  # an optional extra (cma, optuna) that is not installed
        return False


__all__ = ["Candidate", "Driver", "check_fit", "get_driver", "list_drivers", "register_driver"]
