"""Why candidates failed, grouped by reason: what ``search`` prints as each generation commits
(the first occurrence of each reason only) and what ``status`` and ``report`` list.

A failure's error text (see ``workers.job``) is specific to its candidate only in its numbers
(a score, a duration, a line of a long message), so two failures share a reason when their texts
match with every number masked. The first occurrence of each reason is kept verbatim: it is the
one a user reads to fix the fitness.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_SPACE = re.compile(r"\s+")
ONE_LINE = 300  # characters of a reason shown on one terminal line


def one_line(error: str | None, limit: int = ONE_LINE) -> str:
    """The error text on one line, cut to ``limit`` characters."""
    text = _SPACE.sub(" ", error or "no error text recorded").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reason_key(error: str | None) -> str:
    """The reason two failures share: the one-line text with its numbers masked."""
    return _NUMBER.sub("#", one_line(error, limit=10_000))


@dataclass(frozen=True)
class FailureGroup:
    reason: str  # the first occurrence's text, on one line
    count: int
    first: str  # who failed first: "candidate 12 (3fa2c1d09b7e)" or a baseline's label


def group_failures(failures: Iterable[tuple[str, str | None]]) -> list[FailureGroup]:
    """(who, error) pairs in the order they happened -> groups, most frequent first."""
    groups: dict[str, list] = {}
    for who, error in failures:
        g = groups.setdefault(reason_key(error), [one_line(error), 0, who])
        g[1] += 1
    ordered = sorted(groups.values(), key=lambda g: -g[1])  # stable: ties keep first-seen order
    return [FailureGroup(reason=r, count=n, first=w) for r, n, w in ordered]


def candidate_label(idx: int, digest: str) -> str:
    return f"candidate {idx}" + (f" ({digest[:12]})" if digest else "")


def trial_failures(trials: Iterable) -> list[tuple[str, str | None]]:
    """(who, error) of each failed, freshly evaluated trial (a reused result is not a new
    failure: its reason was already counted once)."""
    return [
        (candidate_label(t.idx, t.digest), t.error)
        for t in trials
        if not t.ok and t.reused_from is None
    ]


class FailureLog:
    """Prints the first occurrence of each distinct failure reason, one line each, as they come
    (baselines and candidates share it, so a reason seen on an expert is not repeated)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.seen: set[str] = set()
        self.last_idx = -1

    def note(self, who: str, error: str | None, *, quiet: bool = False) -> bool:
        """Print the reason if it is new (``quiet``: only remember it); True when it was new."""
        key = reason_key(error)
        if key in self.seen:
            return False
        self.seen.add(key)
        if not quiet:
            self.emit(f"{who} failed: {one_line(error)}")
        return True

    def note_new_trials(self, store, *, quiet: bool = False) -> None:
        """Every failure committed to ``store`` since the last call."""
        rows = store.trials(where="WHERE c.idx > ? AND r.status = 'FAIL'", params=(self.last_idx,))
        for who, error in trial_failures(rows):
            self.note(who, error, quiet=quiet)
        last = store.conn.execute("SELECT MAX(idx) FROM candidates").fetchone()[0]
        self.last_idx = self.last_idx if last is None else last


def baseline_failures(baselines: dict) -> list[tuple[str, str | None]]:
    """(label, error) of each failed baseline, from the store's ``baselines`` meta."""
    return [(label, b.get("error")) for label, b in baselines.items() if b.get("fitness") is None]


def any_baseline_scored(baselines: dict) -> bool:
    """Whether one baseline at least scored (False when none is stored)."""
    return len(baseline_failures(baselines)) < len(baselines)


def run_failure_groups(store) -> list[FailureGroup]:
    """Every failure of a run, baselines first (they were scored first), grouped by reason."""
    fails = store.trials(where="WHERE r.status = 'FAIL'")
    return group_failures([*baseline_failures(store.search_baselines()), *trial_failures(fails)])


def group_lines(groups: list[FailureGroup], indent: str = "  ") -> list[str]:
    """One line per reason: count, first occurrence, reason."""
    return [f"{indent}{g.count}× first {g.first}: {g.reason}" for g in groups]
