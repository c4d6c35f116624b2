"""``TaskScore`` and ``EvalResult`` live in ``evomerge.results`` (a neutral module the zoo, the
workers and the store import without importing the fitness package); re-exported here."""

from __future__ import annotations

from evomerge.results import EvalResult, TaskScore

__all__ = ["EvalResult", "TaskScore"]
