"""Fitness: score a resident model on a suite of tasks (lm-eval, zoo, python, perplexity).

``build_fitness(cfg)`` turns a FitnessConfig into a ``Fitness``; ``FITNESS_KINDS`` maps a task
``kind`` to the factory of its runner. Heavy imports (lm_eval, torch) happen only when a task
runs or is built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError
from evomerge.fitness.base import Fitness, TaskRunner
from evomerge.fitness.config import (
    FitnessConfig,
    LmEvalTaskConfig,
    PerplexityTaskConfig,
    PythonTaskConfig,
    ValidationConfig,
    ZooTaskConfig,
    parse_fitness_config,
    task_label,
)
from evomerge.fitness.guard import PUBLIC_BENCHMARKS, public_benchmark_match
from evomerge.results import EvalResult, TaskScore


def _lm_eval(label: str, t: Any, base_dir: Path | None) -> TaskRunner:
    from evomerge.fitness.lm_eval_task import LmEvalTask

    return LmEvalTask(label, t, base_dir)


def _zoo(label: str, t: Any, base_dir: Path | None) -> TaskRunner:
    from evomerge.fitness.zoo_task import ZooTask

    return ZooTask(label, t.evaluator, t.options)


def _python(label: str, t: Any, base_dir: Path | None) -> TaskRunner:
    from evomerge.fitness.python_task import PythonTask

    return PythonTask(label, t.function, base_dir)


def _perplexity(label: str, t: Any, base_dir: Path | None) -> TaskRunner:
    from evomerge.fitness.perplexity import PerplexityTask

    return PerplexityTask(
        label,
        t.text_file,
        max_length=t.max_length,
        max_windows=t.max_windows,
        score=t.score,
        base_dir=base_dir,
    )


FITNESS_KINDS: dict[str, Callable[[str, Any, Path | None], TaskRunner]] = {
    "lm_eval": _lm_eval,
    "zoo": _zoo,
    "python": _python,
    "perplexity": _perplexity,
}


def build_fitness(
    cfg: FitnessConfig, *, base_dir: str | Path | None = None, split: str = "search"
) -> Fitness:
    """Build every task's runner (files and functions are checked here, before any search).

    Relative paths (include_path, text_file, python files) are tried against ``base_dir`` (the
    experiment file's folder) first, then the current directory. ``split="validation"``
    scores each task's validation items instead (``fitness.validation``; same weights).
    """
    bd = Path(base_dir) if base_dir is not None else None
    if split == "validation":
        from evomerge.fitness.validation import validation_runner

        if cfg.validation is None:
            raise UserInputError("fitness.validation is not set; there is no validation split")
        items = cfg.validation.items
        runners = [validation_runner(task_label(t), t, items, bd) for t in cfg.tasks]
    else:
        runners = [FITNESS_KINDS[t.kind](task_label(t), t, bd) for t in cfg.tasks]
        # constraints are checked on the search's scores; the validation split re-scores the
        # archive, whose members are all feasible already
        runners += [
            FITNESS_KINDS[c.task.kind](task_label(c.task), c.task, bd) for c in cfg.constraints
        ]
    return Fitness(cfg, runners)


__all__ = [
    "FITNESS_KINDS",
    "PUBLIC_BENCHMARKS",
    "EvalResult",
    "Fitness",
    "FitnessConfig",
    "LmEvalTaskConfig",
    "PerplexityTaskConfig",
    "PythonTaskConfig",
    "TaskRunner",
    "TaskScore",
    "ValidationConfig",
    "ZooTaskConfig",
    "build_fitness",
    "parse_fitness_config",
    "public_benchmark_match",
]
