"""``python -m evomerge``."""

from evomerge.cli import app

app(prog_name="evomerge")
