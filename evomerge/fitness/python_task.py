"""A user's fitness function referenced by path: ``"path/to/file.py:function"``.

The function is called as ``fn(model, tokenizer)`` and returns a float, a dict of floats (one
entry per sub-task), a TaskScore or an EvalResult (per-example correctness kept). Higher is
better. The file is imported once, under a private module name, when the fitness is built, so a
missing file or function fails before the search starts.

Racing (``fitness.racing``, docs/racing.md) can score a python task a slice at a time if its
function opts in: an ``n_items`` attribute (how many items it scores) and an ``items`` keyword;
called with ``items=[positions in 0..n_items-1]`` it returns one finite score per position, in
that order (a list of floats or a TaskScore whose per_example holds them). Its full score
should be the mean of its item scores: racing tells a candidate raced on every item that mean.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from evomerge.errors import FitnessReturnError, UserInputError
from evomerge.results import EvalResult, TaskScore


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


MUST_RETURN = (
    "it must return a finite float (higher is better), a dict of finite floats, a TaskScore "
    "or an EvalResult"
)


def _shown(value: Any) -> str:
    if value is None:
        return "None (does the function end without `return`?)"
    if isinstance(value, float):
        return repr(value)
    text = repr(value)
    text = text if len(text) <= 40 else text[:39] + "…"
    return f"{type(value).__name__} {text}"


def _score(value: Any, ref: str, key: str | None = None) -> float:
    """A finite float, or a FitnessReturnError naming the function and what it must return."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if ok and math.isfinite(float(value)):
        return float(value)
    where = f"python fitness {ref!r} returned " + (f"{key!r}: " if key is not None else "")
    raise FitnessReturnError(f"{where}{_shown(value)}; {MUST_RETURN}")


def to_task_scores(label: str, value: Any, ref: str) -> dict[str, TaskScore]:
    """Normalize a user function's return value into named TaskScores."""
    if isinstance(value, EvalResult):
        out = {f"{label}/{k}": t for k, t in value.tasks.items()}
    elif isinstance(value, TaskScore):
        out = {label: value}
    elif isinstance(value, Mapping):
        if not value:
            raise FitnessReturnError(
                f"python fitness {ref!r} returned an empty dict; {MUST_RETURN}"
            )
        return {
            f"{label}/{k}": TaskScore(score=_score(v, ref, k), metric="python")
            for k, v in value.items()
        }
    else:
        return {label: TaskScore(score=_score(value, ref), metric="python")}
    for name, t in out.items():  # TaskScore / EvalResult: the score inside must be finite too
        _score(t.score, ref, name)
    return out


class PythonTask:
    def __init__(self, label: str, ref: str, base_dir: Path | None = None) -> None:
        self.label = label
        self.ref = ref
        self.fn = load_function(ref, base_dir)

    def run(self, model: Any, tokenizer: Any) -> dict[str, TaskScore]:
        return to_task_scores(self.label, self.fn(model, tokenizer), self.ref)

    def item_counts(self) -> dict[str, int]:
        """Racing's items: the function's ``n_items``; refused in one line unless it opts in."""
        n = getattr(self.fn, "n_items", None)
        ok = isinstance(n, int) and not isinstance(n, bool) and n >= 1
        if not ok or "items" not in inspect.signature(self.fn).parameters:
            raise UserInputError(
                f"fitness.racing: python fitness {self.ref!r} cannot score a slice of its items; "
                "give the function an items=None parameter and an n_items attribute "
                "(docs/racing.md), or remove fitness.racing"
            )
        return {self.label: n}

    def run_items(
        self, model: Any, tokenizer: Any, positions: dict[str, list[int]]
    ) -> dict[str, TaskScore]:
        pos = list(positions[self.label])
        got = self.fn(model, tokenizer, items=pos)
        return {self.label: TaskScore.from_examples(item_scores(got, len(pos), self.ref), "python")}


def item_scores(value: Any, n: int, ref: str) -> list[float]:
    """The ``n`` finite item scores a function called with ``items=`` returned."""
    vals = value.per_example if isinstance(value, TaskScore) else value
    if isinstance(vals, Sequence) and not isinstance(vals, str) and len(vals) == n:
        return [_score(v, ref, f"item {i}") for i, v in enumerate(vals)]
    raise FitnessReturnError(
        f"python fitness {ref!r} called with items= returned {_shown(value)}; it must return "
        f"one finite score per item asked ({n}), in that order"
    )
