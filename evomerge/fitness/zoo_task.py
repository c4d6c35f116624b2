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

    def item_counts(self) -> dict[str, int]:
        """Entry label -> number of search items (racing); empty when the evaluator scores a
        fixed split with no items to slice (digits)."""
        from evomerge.zoo.evaluate import item_entries, window_size

        lim, off = self.options.get("limit"), self.options.get("offset", 0)
        return {self._entry(k): window_size(t, lim, off) for k, t in item_entries(self.evaluator)}

    def run_items(
        self, model: Any, tokenizer: Any, positions: dict[str, list[int]]
    ) -> dict[str, TaskScore]:
        """Scores of the items at ``positions`` (entry label -> positions in its search window),
        per_example in the order given."""
        from evomerge.zoo.evaluate import evaluate_positions, item_entries

        lim, off = self.options.get("limit"), self.options.get("offset", 0)
        score = self.options.get("score", "exact_match")
        out = {}
        for key, task in item_entries(self.evaluator):
            entry = self._entry(key)
            if positions.get(entry):
                pos = positions[entry]
                out[entry] = evaluate_positions(model, tokenizer, task, pos, lim, off, score)
        return out

    def _entry(self, key: str | None) -> str:
        return self.label if key is None else f"{self.label}/{key}"

    def run(self, model: Any, tokenizer: Any) -> dict[str, TaskScore]:
        out = self.fn(model, tokenizer, **self.options)
        if isinstance(out, EvalResult):
            return {f"{self.label}/{k}": v for k, v in out.tasks.items()}
        if isinstance(out, TaskScore):
            return {self.label: out}
        if isinstance(out, dict):
            return {f"{self.label}/{k}": v for k, v in out.items()}
        raise TypeError(f"zoo evaluator {self.evaluator!r} returned {type(out).__name__}")
