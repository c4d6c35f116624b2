"""The zoo's fast evaluators (``evomerge.zoo.evaluate``): exact-match scoring of the tiny local
experts without lm-eval's overhead, for the demo, the tests and the benchmarks."""

from __future__ import annotations

from typing import Any

from evomerge.errors import UserInputError
from evomerge.results import EvalResult, TaskScore


def zoo_evaluator(name: str) -> Any:
    from evomerge.zoo import evaluate as zev  # late: the zoo imports torch

    registry = getattr(zev, "EVALUATORS", None)
    if registry is None or name not in registry:
        valid = sorted(registry) if registry else []
        raise UserInputError(f"zoo evaluator {name!r} is unknown; valid: {', '.join(valid)}")
    return registry[name]


class ZooTask:
    def __init__(self, label: str, evaluator: str, options: dict[str, Any]) -> None:
        self.label = label
        self.evaluator = evaluator
        self.options = dict(options)
        self.fn = zoo_evaluator(evaluator)
        from evomerge.zoo.evaluate import check_options

        check_options(evaluator, self.options)  # offset/limit past the task's end: fail now

    def run(self, model: Any, tokenizer: Any) -> dict[str, TaskScore]:
        out = self.fn(model, tokenizer, **self.options)
        if isinstance(out, EvalResult):
            return {f"{self.label}/{k}": v for k, v in out.tasks.items()}
        if isinstance(out, TaskScore):
            return {self.label: out}
        if isinstance(out, dict):
            return {f"{self.label}/{k}": v for k, v in out.items()}
        raise TypeError(f"zoo evaluator {self.evaluator!r} returned {type(out).__name__}")
