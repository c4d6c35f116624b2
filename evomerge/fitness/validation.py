"""The validation split of a fitness: items of each task that the search never scores.

A search's best score on its own items is biased upwards: it is the maximum over many noisy
candidates measured on the same items (selection). With ``fitness.validation`` set, the archive
is re-scored on items the search did not see, and the winner is chosen there. The validation
items of each task come after its search items, so the two are disjoint by construction:

* ``zoo``: the search scores ``[offset, offset + limit)``; validation the next ``items``;
* ``lm_eval``: after ``offset``, the docs the search does not score: the next ``items`` docs
  after a ``limit`` window, or ``items`` drawn, with the task's ``subsample_seed`` stream, from
  the docs a ``subsample`` left out (all of them when ``items`` is null);
* ``perplexity``: the ``items`` windows after the search's ``max_windows``;
* ``python``: your ``validation_function`` (evomerge cannot see your items: keep them apart).

``check_split`` (``validation_split.py``, which the config imports) refuses, when the config is
read, a task whose search already takes every item.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError


def validation_runner(label: str, t: Any, items: int | None, base_dir: Path | None) -> Any:
    """The runner of task ``t`` on its validation items (same label; same metric unless the
    task names another for validation: ``validation_task``, ``validation_score``)."""
    if t.kind == "zoo":
        return _zoo(label, t, items)
    if t.kind == "python":
        from evomerge.fitness.python_task import PythonTask

        return PythonTask(label, t.validation_function, base_dir)
    if t.kind == "lm_eval":
        from evomerge.fitness.lm_eval_task import LmEvalTask

        if t.validation_task is not None:  # e.g. exact match after a search on a loglik twin
            t = t.model_copy(update={"task": t.validation_task, "metric": None})
        return LmEvalTask(label, t, base_dir, validation_items=items, validation=True)
    from evomerge.fitness.perplexity import PerplexityTask

    return PerplexityTask(
        label,
        t.text_file,
        max_length=t.max_length,
        max_windows=items,
        skip_windows=t.max_windows,
        score=t.score,
        base_dir=base_dir,
    )


def _zoo(label: str, t: Any, items: int | None) -> Any:
    from evomerge.fitness.zoo_task import ZooTask
    from evomerge.zoo.evaluate import item_tasks

    if not item_tasks(t.evaluator):
        raise UserInputError(
            f"fitness.validation: zoo evaluator {t.evaluator!r} scores one fixed test split, "
            "with no items to hold out; remove fitness.validation or use a task with items"
        )
    start = t.options.get("offset", 0) + t.options["limit"]
    options = {**t.options, "offset": start, "limit": items}
    if t.validation_score is not None:
        options["score"] = t.validation_score
    try:
        return ZooTask(label, t.evaluator, options)
    except UserInputError:
        raise UserInputError(
            f"fitness.validation: zoo task {label!r} has no items after its search items "
            f"(the first {start}); lower options.limit or options.offset"
        ) from None
