"""What a search shows while it runs counts the budget it will stop on, so its ETA means
something (a raced search with `budget.max_item_evals` showed `64/?` and no ETA; one with a
candidate cap as well showed `56/200` and an ETA after it had stopped on items), has an ETA on
real models' slow generations, and reaches a log file (a SLURM job's output) while the search
runs, not only at its end."""

from __future__ import annotations

import io
import re

from rich.console import Console

from evomerge.commands import console as console_module
from evomerge.commands import progress
from evomerge.commands.progress import bar_position
from evomerge.loop import Progress


def _p(n_evals: int, n_items: int, gen: int = 1) -> Progress:
    return Progress(gen, n_evals, n_evals, 0, 0.5, "d", 1.0, n_item_evals=n_items)


def _console(monkeypatch, terminal: bool, now: list[float]) -> io.StringIO:
    shown = io.StringIO()
    console = Console(file=shown, width=120, force_terminal=terminal, get_time=lambda: now[0])
    monkeypatch.setattr(progress, "console", console)
    monkeypatch.setattr(console_module, "console", console)  # what `say` prints to
    return shown


def test_the_count_follows_the_budget_nearer_its_end_and_keeps_it():
    assert bar_position(_p(8, 80), None, None) == ("evals", 8, None)  # time budget only
    assert bar_position(_p(8, 80), 64, None) == ("evals", 8, 64)
    assert bar_position(_p(8, 80), None, 640) == ("items", 80, 640)
    # racing: 8 candidates spent 80 of 640 items and 8 of a 200-candidate cap
    unit, done, total = bar_position(_p(8, 80), 200, 640)
    assert (unit, done, total) == ("items", 80, 640)
    # once chosen, the unit stays (a rate of candidates mixed with items would be no rate)
    assert bar_position(_p(190, 300), 200, 640, unit) == ("items", 300, 640)
    assert bar_position(_p(190, 300), 200, 640) == ("evals", 190, 200)


def test_the_bar_follows_items_and_has_an_eta_for_slow_generations(monkeypatch):
    now = [0.0]
    shown = _console(monkeypatch, True, now)
    with progress.live_progress(200, 640) as live:  # max_evals 200, max_item_evals 640
        live.update(_p(0, 0))  # before the first generation: nothing chosen yet
        assert live.unit is None
        for gen, (n, items) in enumerate([(8, 80), (16, 150), (24, 220)], start=1):
            now[0] = 600.0 * gen  # a generation every 10 minutes, as on a real model
            live.update(_p(n, items, gen))
        task = live.progress.tasks[0]
        assert (live.unit, task.completed, task.total) == ("items", 220, 640)
        # 140 items in 20 minutes: 420 left take an hour
        assert task.time_remaining == 3600.0
        # the bar's "220/640" says the budget; the text says the items once
        assert task.description == "gen 3 best 0.5000 failed 0 items 220"
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.getvalue())  # the terminal's colours
    assert "items 220 " in drawn and " 220/640 0:30:00 ETA 1:00:00" in drawn


def test_a_log_file_gets_a_line_per_generation_while_the_search_runs(monkeypatch):
    now = [0.0]
    shown = _console(monkeypatch, False, now)
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    with progress.live_progress(None, 640) as live:
        live.update(_p(0, 0, 0))
        now[0] = 600.0
        live.update(_p(8, 80))
        assert shown.getvalue().splitlines() == [  # written now, not when the search ends
            "gen 1 best 0.5000 failed 0 items 80  80/640 items  0:10:00  ETA 1:10:00",
        ]
        now[0] = 610.0  # a fast generation: held back (one line per 30 s at most)...
        live.update(_p(16, 160, 2))
        assert len(shown.getvalue().splitlines()) == 1
        now[0] = 620.0
        live.update(_p(24, 240, 3))
        live.say("validation: scoring 3 archived model(s) on held-out items")
    # ...but the last one is always written, before what the search says after it
    assert shown.getvalue().splitlines()[1:] == [
        "gen 3 best 0.5000 failed 0 items 240  240/640 items  0:10:20  ETA 0:17:13",
        "validation: scoring 3 archived model(s) on held-out items",
    ]
