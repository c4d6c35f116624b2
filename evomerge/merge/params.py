"""Parameter resolution with mergekit 0.1.5's semantics.

A setting is a scalar, a list of numbers (a gradient over layer depth) or a list of
``{filter, value}`` rules (the first rule whose filter is a substring of the tensor name wins; no
filter matches everything). Scopes are searched from the most specific: the source's own
parameters, then its slice's, then the recipe's global ``parameters``; the first scope that
yields a value wins. Gradients are evaluated at ``t`` = layer position within its slice,
``i / (n - 1)`` (``t = 1`` for a one-layer slice; ``t = 0`` for non-layer tensors), by linear
interpolation between neighbouring control points — exactly mergekit's arithmetic, so configs
imported from mergekit merge to the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from evomerge.errors import UserInputError
from evomerge.recipe import FilterRule

Scope = Mapping[str, Any] | None


def evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """The value of one setting for one tensor at depth ``t`` (None when no rule matches)."""
    if isinstance(setting, FilterRule) or isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, (list, tuple)):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            return _gradient(list(setting), t)
        for rule in setting:
            flt, value = _rule(rule)
            if flt is None or flt == "*" or (tensor_name and flt in tensor_name):
                return evaluate(value, tensor_name, t)
        return None
    raise UserInputError(f"parameter value {setting!r}: expected a number, a list or filter rules")


def _rule(rule: Any) -> tuple[str | None, Any]:
    if isinstance(rule, FilterRule):
        return rule.filter, rule.value
    if isinstance(rule, dict) and "value" in rule:
        return rule.get("filter"), rule["value"]
    raise UserInputError(f"parameter rule {rule!r}: expected {{filter, value}}")


def _gradient(values: list[Any], t: float) -> Any:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def resolve(
    name: str,
    scopes: Iterable[Scope],
    *,
    tensor_name: str,
    t: float,
    defaults: Mapping[str, Any],
    where: str,
) -> Any:
    """First value found in ``scopes`` (most specific first), else the operator's default."""
    for scope in scopes:
        if scope and name in scope:
            value = evaluate(scope[name], tensor_name, t)
            if value is not None:
                return value
    if name in defaults:
        return defaults[name]
    raise UserInputError(
        f"{where}: missing required parameter {name!r} for tensor {tensor_name}; "
        f"set it under that model's 'parameters' or the recipe's global 'parameters'"
    )
