"""SerialEvaluator: scores candidates one after another in this process, on one resident model.

The worker state (experts in memory, the resident model, tokenizer, fitness) is built once and
reused for every candidate; each job goes through ``run_job``, the same function the Ray
evaluator's actors run, so a failure is a FAIL result and never stops the search.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from evomerge.recipe import Recipe
from evomerge.workers.base import Evaluator, JobResult
from evomerge.workers.job import WorkerContext, run_job, run_wants_job
from evomerge.workers.threads import ThreadChoice
from evomerge.workers.threads import apply as apply_threads


class SerialEvaluator(Evaluator):
    def __init__(
        self,
        context: WorkerContext | Callable[[], WorkerContext],
        *,
        timeout_s: float | None = None,
        on_result: Callable[[JobResult], None] | None = None,
        threads: ThreadChoice | None = None,
    ) -> None:
        # A factory defers loading experts until the first candidate (cheap start, and the CLI
        # can report progress before the load).
        self._ctx = context if not callable(context) or hasattr(context, "materialize") else None
        self._factory = None if self._ctx is not None else context
        self._split: str | None = None  # use_split's, applied to a context built later
        self.timeout_s = timeout_s
        self.on_result = on_result
        # torch's threads are process-wide: set for this evaluator's life, restored on close
        self.threads, self._threads_before = threads, None
        if threads is not None:
            import torch

            self._threads_before = torch.get_num_threads()
            apply_threads(threads)

    @property
    def context(self) -> WorkerContext:
        if self._ctx is None:
            self._ctx = self._factory()  # type: ignore[misc]
            if self._split is not None:
                self._ctx.use_split(self._split)  # type: ignore[attr-defined]
        return self._ctx

    def use_split(self, split: str) -> bool:
        if self._ctx is not None and not hasattr(self._ctx, "use_split"):
            return False
        self._split = split
        if self._ctx is not None:
            self._ctx.use_split(split)  # type: ignore[attr-defined]
        return True

    def evaluate(
        self, recipes: Sequence[Recipe], items: Sequence[dict[str, list[int]]] | None = None
    ) -> list[JobResult]:
        out = []
        for i, recipe in enumerate(recipes):
            sel = None if items is None else items[i]
            result = run_job(self.context, recipe, timeout_s=self.timeout_s, items=sel)
            if self.on_result is not None:
                self.on_result(result)
            out.append(result)
        return out

    def evaluate_wants(
        self, recipes: Sequence[Recipe], wants: Sequence[Mapping[str, Any]]
    ) -> list[JobResult]:
        return [
            run_wants_job(self.context, r, w, timeout_s=self.timeout_s)
            for r, w in zip(recipes, wants, strict=True)
        ]

    def close(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None and hasattr(ctx, "close"):
            ctx.close()
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None
