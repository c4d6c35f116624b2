"""Renamed: the body of ``evomerge eval`` is ``evomerge.commands.evaluate``. This name is kept
so that old imports work."""

from __future__ import annotations

from evomerge.commands.evaluate import evaluate, load_model

__all__ = ["evaluate", "load_model"]
