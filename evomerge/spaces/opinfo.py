"""What a search space needs to know about an operator, read from the ops registry's ``OpSpec``.

Kept in one place so the spaces depend on a handful of OpSpec fields only: ``name``,
``per_model_params``, ``global_params``, ``defaults``, ``param_bounds``, ``needs_base``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from evomerge.errors import UserInputError

# Used only where an operator declares no finite bounds for a numeric param; these are the
# ranges in which the param means something (Sakana searches weight/density in [0, 1]).
FALLBACK_BOUNDS: dict[str, tuple[float, float]] = {
    "weight": (0.0, 1.0),
    "density": (0.0, 1.0),
    "t": (0.0, 1.0),
    "lambda": (0.0, 2.0),
    "epsilon": (0.0, 0.2),
    "gamma": (0.0, 0.1),
    "scale": (0.0, 2.0),
}


@dataclass(frozen=True)
class OpInfo:
    name: str
    per_model_params: tuple[str, ...]
    global_params: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    param_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    needs_base: bool = False
    needs_activations: bool = False  # reads the base's activations on calibration text (AIM)

    def is_numeric(self, p: str) -> bool:
        d = self.defaults.get(p)
        return not isinstance(d, bool) and (d is None or isinstance(d, (int, float)))

    def bounds(self, p: str) -> tuple[float, float]:
        lo, hi = self.param_bounds.get(p, (-math.inf, math.inf))
        if math.isfinite(lo) and math.isfinite(hi):
            return float(lo), float(hi)
        if p in FALLBACK_BOUNDS:
            flo, fhi = FALLBACK_BOUNDS[p]
            return max(flo, lo), min(fhi, hi)
        raise UserInputError(
            f"{self.name}: parameter {p!r} has no finite bounds; give them in the space "
            f"config, e.g. bounds: {{{p}: [0.0, 1.0]}}"
        )

    def searchable(self, names: Iterable[str]) -> list[str]:
        """Numeric params with finite bounds (declared or fallback): the ones genes can drive."""
        out = []
        for p in names:
            if not self.is_numeric(p):
                continue
            lo, hi = self.param_bounds.get(p, (-math.inf, math.inf))
            if (math.isfinite(lo) and math.isfinite(hi)) or p in FALLBACK_BOUNDS:
                out.append(p)
        return out


def op_info(name: str) -> OpInfo:
    """Look the operator up in ``evomerge.merge.ops`` (an unknown name lists the registered ones)."""
    from evomerge.merge.ops import get_op  # late: the ops registry imports torch

    try:
        spec = get_op(name)
    except KeyError as err:
        raise UserInputError(f"merge_method: {err}") from None
    return OpInfo(
        name=getattr(spec, "name", name),
        per_model_params=tuple(getattr(spec, "per_model_params", ())),
        global_params=tuple(getattr(spec, "global_params", ())),
        defaults=dict(getattr(spec, "defaults", {}) or {}),
        param_bounds={k: tuple(v) for k, v in (getattr(spec, "param_bounds", {}) or {}).items()},
        needs_base=bool(getattr(spec, "needs_base", False)),
        needs_activations=bool(getattr(spec, "needs_activations", False)),
    )
