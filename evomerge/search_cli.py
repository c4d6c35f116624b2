"""Renamed: each command's body is in ``evomerge/commands/`` (search and resume in
``commands.search``; ``status``, ``export`` and ``report`` in their own modules). This name is
kept so that old imports work."""

from __future__ import annotations

from evomerge.commands.export import export
from evomerge.commands.report import report
from evomerge.commands.search import resume, search
from evomerge.commands.status import status

__all__ = ["export", "report", "resume", "search", "status"]
