"""The keys a config mapping accepts, found from a pydantic error's location.

pydantic reports an unknown key as its path ('fitness.validation.limit') but not what the
mapping there accepts; a user who misspelt a key wants the right one. ``keys_at`` walks the
config's model classes along the path (fields, lists, dicts, optional and tagged-union
members) to the mapping that holds the unknown key, and ``unknown_key_hint`` turns its keys
into the end of the error line: a close match, else the keys themselves.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel

LIST_MAX = 16  # more keys than this: point to `evomerge schema` instead of listing them


def _members(t: Any) -> list[Any]:
    """``t`` without Annotated, and a union split into its members (None dropped)."""
    while typing.get_origin(t) is Annotated:
        t = typing.get_args(t)[0]
    if typing.get_origin(t) in (Union, types.UnionType):
        return [m for a in typing.get_args(t) if a is not type(None) for m in _members(a)]
    return [t]


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """Key as written in a config (the alias where there is one) -> its annotation."""
    return {(f.alias or name): f.annotation for name, f in model.model_fields.items()}


def _tagged(model: type[BaseModel], tag: str) -> bool:
    """``model`` is the member of a tagged union that pydantic names ``tag`` in a path."""
    for f in model.model_fields.values():
        if typing.get_origin(f.annotation) is Literal and tag in typing.get_args(f.annotation):
            return True
    return False


def _step(t: Any, part: str | int) -> Any:
    """The type found one path element below ``t`` (None: the path leaves the models)."""
    members = _members(t)
    if isinstance(part, int):
        for m in members:
            if typing.get_origin(m) in (list, tuple, Sequence) and typing.get_args(m):
                return typing.get_args(m)[0]
        return None
    for m in members:
        if _is_model(m) and part in _fields(m):
            return _fields(m)[part]
    for m in members:
        if typing.get_origin(m) is dict and len(typing.get_args(m)) == 2:
            return typing.get_args(m)[1]
    tagged = [m for m in members if _is_model(m) and _tagged(m, part)]
    return tagged[0] if len(tagged) == 1 else None


def keys_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """The keys of the mapping that holds ``loc``'s last element (an unknown key), or None
    where the path cannot be followed to one model."""
    t: Any = model
    for part in loc[:-1]:
        t = _step(t, part)
        if t is None:
            return None
    found = [m for m in _members(t) if _is_model(m)]
    # several models (a union without its tag in the path): which keys apply is not known
    return sorted(_fields(found[0])) if len(found) == 1 else None


def unknown_key_hint(model: type[BaseModel] | None, loc: Sequence[str | int]) -> str:
    """'did you mean ...?' or the valid keys, for the error line of an unknown key."""
    if model is None or not loc:
        return "remove it or check its spelling"
    keys = keys_at(model, loc)
    if not keys:
        return "remove it or check its spelling"
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if len(keys) > LIST_MAX:
        return "remove it or check its spelling (`evomerge schema` lists the valid keys)"
    return f"remove it or use one of: {', '.join(keys)}"


def valid_names(name: str, valid: Sequence[str]) -> str:
    """``did you mean 'dare_ties'? valid: ...`` (or just the valid list) for an unknown name."""
    close = difflib.get_close_matches(name.replace("-", "_").lower(), valid, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}valid: {', '.join(valid)}"
