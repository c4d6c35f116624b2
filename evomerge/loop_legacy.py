"""Checkpoints written before the store had a ``pending`` table (evomerge before issue 17).

The ask-ahead loop of those versions wrapped the driver so that its pickled state carried the
batch asked ahead: ``{"__ask_ahead__": {"driver": <the driver's state>, "pending": [(index, x,
meta[, wants]), ...]}}``. Resume of such a store reads the batch from there; the next commit
writes it the current way (driver state as the driver gave it, batch in ``pending``).
"""

from __future__ import annotations

from typing import Any

LEGACY_KEY = "__ask_ahead__"


def split_legacy_state(state: dict[str, Any]) -> tuple[dict[str, Any], list[tuple] | None]:
    """(the driver's own state, the legacy pending batch or None when ``state`` is not one)."""
    if not isinstance(state, dict) or LEGACY_KEY not in state:
        return state, None
    return state[LEGACY_KEY]["driver"], list(state[LEGACY_KEY]["pending"])
