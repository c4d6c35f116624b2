"""Why a search stopped, kept in the store's ``meta`` table (key ``stop``) so that ``status`` and
``report`` can say it after the process is gone.

The loop writes ``{"reason": null}`` when it starts and the reason when it returns, so a store
whose search was killed (SIGKILL, a lost node) reads as "running or killed", never as the reason
of an earlier, resumed-from stop. ``search`` writes ``baselines_failed`` when every expert and the
base failed the fitness before any candidate was asked.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

META_KEY = "stop"

_TEXT = {
    "max_evals": "budget.max_evals reached",
    "max_item_evals": "budget.max_item_evals reached (checked at generation ends: the last "
    "generation is scored whole, so it may go over)",
    "max_candidates": "budget.max_candidates reached (most asked recipes were repeats)",
    "max_seconds": "budget.max_seconds reached",
    "driver": "the driver's own stop criterion (converged or exhausted)",
    "interrupted": "interrupted (Ctrl-C or SIGTERM); `evomerge resume` continues it",
    "baselines_failed": "every expert and the base failed the fitness, so no candidate was asked",
    "all_failed": "every candidate of this search (or resume) failed, so it stopped early; "
    "fix the cause (failures by reason below), then `evomerge resume` continues it",
}


@dataclass(frozen=True)
class StopRecord:
    reason: str | None  # None: the search is running, or was killed before it could stop
    detail: str = ""

    def describe(self) -> str:
        if self.reason is None:
            return "not stopped: the search is still running or was killed; `evomerge resume` continues it"
        text = _TEXT.get(self.reason, self.reason)
        return f"{text}: {self.detail}" if self.detail else text


def stop_detail(reason: str | None, state, max_item_evals: int | None) -> str:
    """``64 evaluations, 0 failed``; when the item budget stopped it, the items spent too
    (``64 evaluations, 640 item evaluations of 614, 0 failed``)."""
    items = ""
    if reason == "max_item_evals":
        items = f", {state.n_item_evals} item evaluations of {max_item_evals}"
    return f"{state.n_evals} evaluations{items}, {state.n_failed} failed"


def record_stop(store, reason: str | None, detail: str = "") -> None:
    payload = {"reason": reason, "detail": detail, "time": time.time()}
    store.set_meta(META_KEY, json.dumps(payload))


def read_stop(store) -> StopRecord | None:
    """The stored stop, or None for a store written before stops were recorded."""
    data = store.get_json(META_KEY)
    if data is None:
        return None
    return StopRecord(reason=data.get("reason"), detail=data.get("detail") or "")
