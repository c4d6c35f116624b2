"""Renamed: the builder is ``evomerge.build`` (this name is kept so that old imports work)."""

from __future__ import annotations

from evomerge.build import (
    Search,
    build_driver,
    build_evaluator,
    build_racer,
    build_space,
    open_resume,
    open_search,
    thread_summary,
    validate_fitness,
)
from evomerge.experiment import SOURCES_DIR, num_layers_of
from evomerge.experiment import recipe_resolver as resolver_for

__all__ = [
    "SOURCES_DIR",
    "Search",
    "build_driver",
    "build_evaluator",
    "build_racer",
    "build_space",
    "num_layers_of",
    "open_resume",
    "open_search",
    "resolver_for",
    "thread_summary",
    "validate_fitness",
]
