"""``driver.options``: one frozen dataclass per driver, one parser, one error style.

Every driver declares ``options_cls``, a frozen dataclass whose fields are its options, each made
with ``option(default, "what it means")``. ``Driver.__init__`` parses the keywords it is given
into it with ``parse_options``, and ``evomerge schema`` (docs/config.md) reads the same fields,
types, defaults and meanings, so the parser and the docs cannot drift apart.

Errors are one line naming ``driver.options.<key>``: an unknown key lists the valid ones, a
missing required key says what it is, a value of the wrong type says the type expected, and a
value the dataclass's ``__post_init__`` refuses (``invalid(key, value, fix)``) says the fix.
Values are passed through unconverted (an int given for a float stays an int), so a parsed
option is exactly what the driver received before this parser existed.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from evomerge.errors import UserInputError
from evomerge.type_names import type_name

REQUIRED: Any = dataclasses.MISSING


def option(default: Any = REQUIRED, help: str = "", *, factory: Callable[[], Any] | None = None):
    """A field of an options dataclass: its default (or ``factory`` for a mutable one; neither:
    required) and the one line ``evomerge schema`` shows for it."""
    if not help:
        raise TypeError("option(): every driver option needs a one-line help")
    meta = {"help": help}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_help(options_cls: type) -> dict[str, str]:
    """key -> the one line of help each option of ``options_cls`` was declared with."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(options_cls)}


class InvalidOption(UserInputError):
    """Raised by an options dataclass's ``__post_init__``; ``parse_options`` names the driver."""

    def __init__(self, key: str, value: Any, fix: str) -> None:
        super().__init__(f"driver.options.{key} {value!r}: {fix}")


def invalid(key: str, value: Any, fix: str) -> InvalidOption:
    """The error for a value of the right type that the option cannot take (raise it)."""
    return InvalidOption(key, value, fix)


def parse_options(driver: str, options_cls: type, options: Mapping[str, Any]) -> Any:
    """``options_cls(**options)``, refusing unknown keys, missing required ones, values of the
    wrong type and (through ``__post_init__``) values out of range, each in one line."""
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        named = ", ".join(f"driver.options.{k}" for k in unknown)
        valid = f"valid: {', '.join(fields)}" if fields else "this driver takes no options"
        raise UserInputError(f"{driver}: unknown {named}; {valid}")
    for name, f in fields.items():
        required = f.default is REQUIRED and f.default_factory is REQUIRED
        if required and name not in options:
            raise UserInputError(
                f"{driver}: driver.options.{name} ({f.metadata.get('help', name)}) is required"
            )
    hints = typing.get_type_hints(options_cls)
    for key, value in options.items():
        if not _fits(value, hints[key]):
            raise UserInputError(
                f"{driver}: driver.options.{key} is {value!r} ({type(value).__name__}); "
                f"it takes {type_name(hints[key])} (docs/config.md, driver {driver!r})"
            )
    try:
        return options_cls(**options)
    except InvalidOption as err:
        raise UserInputError(f"{driver}: {err}") from None


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a YAML value (or what a test passes) can be the option of this annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    if annotation is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False  # YAML's true/false is not a number
    if annotation is int:
        return isinstance(value, numbers.Integral)
    if annotation is float:
        return isinstance(value, numbers.Real)
    if annotation is str:
        return isinstance(value, str)
    if annotation is dict or origin is dict:
        return isinstance(value, Mapping)
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, (list, tuple, np.ndarray))
    return True
