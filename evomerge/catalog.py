"""``evomerge list``: the names an experiment YAML may use, one category per line, straight from
the registries (drivers, merge operators, space kinds) and the folders the loader searches
(space presets, fitness suites), so what it prints is what the loader accepts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from evomerge.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]


def _drivers() -> list[str]:
    from evomerge.drivers import list_drivers

    return list_drivers()


def _operators() -> list[str]:
    from evomerge.merge.ops import list_ops

    return list_ops()


def _spaces() -> list[str]:
    from evomerge.spaces.config import KINDS

    return list(KINDS)


def _presets() -> list[str]:
    from evomerge.spaces.presets import available_presets

    return available_presets()


def _suites() -> list[str]:
    """Fitness suites by name (``fitness: NAME``): fitness/<name>.yaml or fitness/<name>/suite.yaml
    in the current directory or the repository, as ``config._load_suite`` looks them up."""
    names: set[str] = set()
    for root in (Path.cwd() / "fitness", REPO / "fitness"):
        if root.is_dir():
            names.update(p.stem for p in root.glob("*.yaml"))
            names.update(p.parent.name for p in root.glob("*/suite.yaml"))
    return sorted(names)


def _evaluators() -> list[str]:
    from evomerge.zoo.evaluate import EVALUATORS

    return sorted(EVALUATORS)


def _zoos() -> list[str]:
    from evomerge.zoo.build import list_zoos

    return list_zoos()


def _moe_methods() -> list[str]:
    from evomerge.moe.reduce import METHODS

    return list(METHODS)


# category -> (where it goes in an experiment, the names)
CATEGORIES: dict[str, tuple[str, Callable[[], list[str]]]] = {
    "drivers": ("driver.name", _drivers),
    "operators": ("space.merge_method", _operators),
    "spaces": ("space.kind", _spaces),
    "presets": ("space: NAME", _presets),
    "suites": ("fitness: NAME", _suites),
    "evaluators": ("fitness.tasks[].evaluator (kind zoo)", _evaluators),
    "zoos": ("models: [zoo:NAME/<model>], evomerge zoo build NAME", _zoos),
    "moe": ("evomerge moe-reduce --method NAME", _moe_methods),
}


def catalog(what: str | None = None) -> list[str]:
    """Lines of ``evomerge list [WHAT]``: ``category (key): name, name, ...``."""
    if what is not None and what not in CATEGORIES:
        raise UserInputError(f"list {what!r}: unknown; give one of {', '.join(CATEGORIES)}")
    chosen = [what] if what else list(CATEGORIES)
    return [
        f"{c} ({CATEGORIES[c][0]}): {', '.join(CATEGORIES[c][1]()) or '(none)'}" for c in chosen
    ]
