"""How the docs and the error lines name a Python type annotation for a YAML reader
(``int or null``, ``list of str``): one place, so docs/config.md and the driver options' errors
say the same (``evomerge.config_reference``, ``evomerge.drivers.options``)."""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any


def type_name(annotation: Any) -> str:
    """A YAML reader's name for a type: ``int or null``, ``list of str``, ``'a' | 'b'``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, collections.abc.Sequence):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is dict or annotation is dict:
        return f"mapping of {type_name(args[1])}" if args else "mapping"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))
