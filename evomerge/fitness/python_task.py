"""A user's fitness function referenced by path: ``"path/to/file.py:function"``.

The function is called as ``fn(model, tokenizer)`` and returns a float, a dict of floats (one
entry per sub-task), a TaskScore or an EvalResult (per-example correctness kept). Higher is
better. The file is imported once, under a private module name, when the fitness is built, so a
missing file or function fails before the search starts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import numbers
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError
from evomerge.fitness.result import EvalResult, TaskScore


def load_function(ref: str, base_dir: Path | None = None) -> Callable[..., Any]:
    path_s, _, fn_name = ref.rpartition(":")
    path = Path(path_s).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).is_file():
        path = base_dir / path
    if not path.is_file():
        raise UserInputError(f"python fitness {ref!r}: file {path} not found")
    mod_name = "_evomerge_fitness_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise UserInputError(f"python fitness {ref!r}: {path} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # pickling by Ray workers needs the module findable
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(mod_name, None)
        raise UserInputError(f"python fitness {ref!r}: importing {path} failed: {err!r}") from err
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UserInputError(
            f"python fitness {ref!r}: {path} has no function {fn_name!r}; it defines {found}"
        )
    return fn


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{where} must be a number, got {type(v).__name__}")
    return float(v)


def to_task_scores(label: str, value: Any, ref: str) -> dict[str, TaskScore]:
    """Normalize a user function's return value into named TaskScores."""
    where = f"python fitness {ref!r} returned"
    if isinstance(value, EvalResult):
        return {f"{label}/{k}": t for k, t in value.tasks.items()}
    if isinstance(value, TaskScore):
        return {label: value}
    if isinstance(value, Mapping):
        if not value:
            raise TypeError(f"{where} an empty dict; return at least one score")
        return {
            f"{label}/{k}": TaskScore(score=_number(v, f"{where} {k!r}:"), metric="python")
            for k, v in value.items()
        }
    try:
        score = _number(value, where)
    except TypeError:
        raise TypeError(
            f"{where} {type(value).__name__}; return a float, a dict of floats, a TaskScore "
            "or an EvalResult"
        ) from None
    return {label: TaskScore(score=score, metric="python")}


class PythonTask:
    def __init__(self, label: str, ref: str, base_dir: Path | None = None) -> None:
        self.label = label
        self.ref = ref
        self.fn = load_function(ref, base_dir)

    def run(self, model: Any, tokenizer: Any) -> dict[str, TaskScore]:
        out = to_task_scores(self.label, self.fn(model, tokenizer), self.ref)
        for name, t in out.items():
            if math.isinf(t.score):
                raise ValueError(f"python fitness {self.ref!r}: {name} scored {t.score}")
        return out
