"""What a search shows while it runs: one line per committed generation (generation, best,
failures, item evaluations) and how far it is through the budget it will stop on, with an ETA.

On a terminal that is a rich progress bar redrawn in place. Elsewhere (a SLURM job's output
file, `nohup`, a pipe) rich draws its bar only when the search ends, so a search of hours
printed nothing in between; there each generation gets a plain line instead, at most one
every `LOG_EVERY_S` seconds, plus the last.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

from evomerge.commands.console import console, say
from evomerge.loop import Progress
from evomerge.validation import ESTIMATE_NOTE

LOG_EVERY_S = 30.0


def progress_line(p: Progress, max_items: int | None = None) -> str:
    """The live line's text: generation, best, failures and item evaluations (the fitness's
    unit of cost; racing spends fewer per candidate)."""
    best = "-" if math.isnan(p.best_fitness) else f"{p.best_fitness:.4f}"
    if p.best_estimate:  # racing.archive_places 0: a mean over the items it was scored on
        best += ESTIMATE_NOTE
    items = f"{p.n_item_evals}{f'/{max_items}' if max_items else ''}"
    return f"gen {p.generation} best {best} failed {p.n_failed} items {items}"


def bar_position(
    p: Progress, max_evals: int | None, max_items: int | None, unit: str | None = None
) -> tuple[str, int, int | None]:
    """What the progress counts (unit, done, total), and so what its ETA extrapolates:
    evaluations against ``budget.max_evals`` or item evaluations against
    ``budget.max_item_evals``; with both, the one nearer its end when it first moves (a raced
    search stops on items long before its candidate cap), kept after that so the rate is
    never a mix of the two. No count budget: evaluations, no total (no ETA)."""
    budgets = {"evals": (p.n_evals, max_evals), "items": (p.n_item_evals, max_items)}
    given = {k: b for k, b in budgets.items() if b[1]}
    if not given:
        return "evals", p.n_evals, None
    if unit not in given:
        unit = max(given, key=lambda k: given[k][0] / given[k][1])
    return unit, *given[unit]


class _Counted:
    """The unit the progress counts, chosen on the first progress and kept."""

    def __init__(self, max_evals: int | None, max_items: int | None) -> None:
        self.max_evals, self.max_items = max_evals, max_items
        self.unit: str | None = None

    def position(self, p: Progress) -> tuple[str, int, int | None, str]:
        """(unit, done, total, text); when items are counted, the text leaves their budget to
        the count (``items 80`` beside ``80/640``)."""
        unit, done, total = bar_position(p, self.max_evals, self.max_items, self.unit)
        self.unit = unit if (p.n_evals or p.n_item_evals) else None  # nothing done yet
        text = progress_line(p, None if unit == "items" else self.max_items)
        return unit, done, total, text

    def flush(self) -> None:
        """Write what is held back (a log's last generation line); a bar holds nothing."""

    def say(self, text: str) -> None:
        """A line of the search's own (validation): after the generation lines it follows."""
        self.flush()
        say(text)


class _Bar(_Counted):
    def __init__(self, progress, task, max_evals: int | None, max_items: int | None) -> None:
        super().__init__(max_evals, max_items)
        self.progress, self.task = progress, task

    def update(self, p: Progress) -> None:
        _, done, total, text = self.position(p)
        self.progress.update(self.task, completed=done, total=total, description=text)


class _Lines(_Counted):
    """A line per generation for a log file: the text, done/total with its unit, the time
    since the search (or resume) started, and an ETA from the rate since then."""

    def __init__(
        self,
        max_evals: int | None,
        max_items: int | None,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(max_evals, max_items)
        self.every_s, self.clock = every_s, clock or time.monotonic
        self.start = self.clock()
        self.first: tuple[float, int] | None = None  # (time, done) at the first update
        self.last_said = -math.inf
        self.pending: str | None = None  # the newest line not printed yet

    def update(self, p: Progress) -> None:
        unit, done, total, text = self.position(p)
        now = self.clock()
        if self.first is None:  # the search's start: 0 in any unit, or a resume's counts
            self.first = (now, done)
        if self.unit is None:  # a fresh search's start: nothing to say yet
            return
        line = f"{text}  {done}/{total if total else '?'} {unit}  {_clock(now - self.start)}"
        if total:
            line += f"  ETA {self._eta(now, done, total)}"
        self.pending = line
        if now - self.last_said >= self.every_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.pending is not None:
            say(self.pending)
            self.pending, self.last_said = None, self.clock() if now is None else now

    def _eta(self, now: float, done: int, total: int) -> str:
        if done >= total:
            return _clock(0)
        if self.first is None or done <= self.first[1] or now <= self.first[0]:
            return "-:--:--"
        rate = (done - self.first[1]) / (now - self.first[0])
        return _clock((total - done) / rate)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@contextlib.contextmanager
def live_progress(max_evals: int | None, max_items: int | None = None) -> Iterator[_Counted]:
    """A bar on a terminal, lines elsewhere; ``update(progress)`` after each generation."""
    if not console.is_terminal:
        lines = _Lines(max_evals, max_items)
        try:
            yield lines
        finally:
            lines.flush()  # the last generation's line, whenever it came
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    cols = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    # rich's rate (and so its ETA) is taken over the last 30 s of updates by default; the bar
    # moves once a generation, and a real model's generations take longer than that, so there
    # was never a rate and no ETA: take it over a week of updates, in effect the whole search
    period = 7 * 24 * 3600.0
    with RichProgress(
        *cols, console=console, transient=False, speed_estimate_period=period
    ) as prog:
        yield _Bar(prog, prog.add_task("starting", total=max_evals), max_evals, max_items)
