"""The search's live bar counts the budget the search will stop on, so its ETA means something:
a raced search with `budget.max_item_evals` showed `64/?` and no ETA, and one with a candidate
cap as well showed `56/200` and an ETA long after it had stopped on items."""

from __future__ import annotations

import io

from rich.console import Console

from evomerge.commands.search import bar_position
from evomerge.loop import Progress


def _p(n_evals: int, n_items: int) -> Progress:
    return Progress(1, n_evals, n_evals, 0, 0.5, "d", 1.0, n_item_evals=n_items)


def test_the_bar_counts_the_budget_nearer_its_end_and_keeps_it():
    assert bar_position(_p(8, 80), None, None) == ("evals", 8, None)  # time budget only
    assert bar_position(_p(8, 80), 64, None) == ("evals", 8, 64)
    assert bar_position(_p(8, 80), None, 640) == ("items", 80, 640)
    # racing: 8 candidates spent 80 of 640 items and 8 of a 200-candidate cap
    unit, done, total = bar_position(_p(8, 80), 200, 640)
    assert (unit, done, total) == ("items", 80, 640)
    # once chosen, the unit stays (a rate of candidates mixed with items would be no rate)
    assert bar_position(_p(190, 300), 200, 640, unit) == ("items", 300, 640)
    assert bar_position(_p(190, 300), 200, 640) == ("evals", 190, 200)


def test_the_live_bar_follows_items_and_has_an_eta_for_slow_generations(monkeypatch):
    from evomerge.commands import search

    now = [0.0]
    shown = io.StringIO()
    console = Console(file=shown, width=120, get_time=lambda: now[0])
    monkeypatch.setattr(search, "console", console)
    with search._live(200, 640) as live:  # max_evals 200, max_item_evals 640
        live.update(_p(0, 0))  # before the first generation: nothing chosen yet
        assert live.unit is None
        for minutes, (n, items) in enumerate([(8, 80), (16, 150), (24, 220)], start=1):
            now[0] = 600.0 * minutes  # a generation every 10 minutes, as on a real model
            live.update(_p(n, items))
        task = live.progress.tasks[0]
        assert (live.unit, task.completed, task.total) == ("items", 220, 640)
        # 140 items in 20 minutes: 420 left take an hour
        assert task.time_remaining == 3600.0
        # the bar's "220/640" says the budget; the text says the items once
        assert task.description == "gen 1 best 0.5000 failed 0 items 220"
    assert "items 220 " in shown.getvalue() and " 220/640 " in shown.getvalue()
