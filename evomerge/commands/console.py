"""Where the commands print: progress and notes to stderr (``console``), results to stdout
(``out``, never wrapped: paths and digests must stay copy-pasteable)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
out = Console(soft_wrap=True)


def say(text: str) -> None:
    """One line to stderr, as written: error texts hold [brackets] (not markup) and must stay
    one line (grep-able logs)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)
