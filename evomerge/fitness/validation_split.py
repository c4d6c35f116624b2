"""Which tasks leave items for ``fitness.validation``: ``check_split`` refuses, when the config is
read, a task whose search already scores every item (the runners that score the held-out items
are in ``validation.py``; this check is apart from them so that the config imports no runner)."""

from __future__ import annotations

from typing import Any


def check_split(t: Any, where: str) -> None:
    """ValueError (shown as one config error line) when task ``t`` leaves nothing to validate."""
    fix = "set it, or remove fitness.validation"
    if t.kind == "lm_eval" and t.limit is None and t.subsample is None:
        raise ValueError(
            f"{where}: the search scores every doc of lm_eval task {t.task!r}, none is left for "
            "validation; set limit or subsample"
        )
    if t.kind == "zoo" and t.options.get("limit") is None:
        raise ValueError(
            f"{where}.options.limit: the search scores every item of zoo task {t.evaluator!r}, "
            f"none is left for validation; {fix}"
        )
    if t.kind == "python" and t.validation_function is None:
        raise ValueError(
            f"{where}.validation_function: fitness.validation needs the held-out version of "
            f"{t.function!r}; {fix}"
        )
    if t.kind == "perplexity" and t.max_windows is None:
        raise ValueError(
            f"{where}.max_windows: the search scores every window of {t.text_file!r}, none is "
            f"left for validation; {fix}"
        )
