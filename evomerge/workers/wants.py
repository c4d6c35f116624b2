"""What a candidate may ask a worker for besides its fitness (``Candidate.wants``), and how the
loop hands the answers to ``tell``.

A driver that steps on more than a score (Frank-Wolfe, AdaMerging: a gradient) names it in
``Candidate.wants`` (key -> request). The evaluator runs a wants job for that candidate
(``workers.job.run_wants_job``, on the same serial or Ray workers, timeout and failure handling
as the fitness job) and ``tell`` receives ``wanted``: per candidate, key -> answer. Each key has a
way to compute its answer and a way to say it failed, so a driver always receives an answer it
can read (a timed-out or crashed job included).

Why a job of its own rather than a part of the fitness job: the loop reuses the stored score of
a recipe scored before, but what a candidate wants is not stored and may differ for the same
recipe (FW holding at the same theta; AdaMerging's batch changes with its step), so it must be
computed every time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evomerge.workers.gradient import Alignment


@dataclass(frozen=True)
class Want:
    compute: Callable[[Any, Any], Any]  # (the worker's pool space, request) -> answer; no raise
    failed: Callable[[str], Any]  # error text -> the answer that says so


def _gradient(space: Any, request: Any) -> Alignment:
    from evomerge.workers.gradient_job import run_gradient_job

    return run_gradient_job(space, request)


WANTS: dict[str, Want] = {"gradient": Want(_gradient, Alignment.failed)}


def compute_wants(space: Any, wants: Mapping[str, Any]) -> dict[str, Any]:
    """Every answer a candidate asked for (``space``: the run's search space)."""
    unknown = sorted(set(wants) - set(WANTS))
    if unknown:
        raise ValueError(f"a candidate wants {unknown}; a worker computes only {sorted(WANTS)}")
    return {key: WANTS[key].compute(space, request) for key, request in wants.items()}


def answers(wants: Mapping[str, Any], wanted: Mapping[str, Any], error: str | None) -> dict:
    """``wanted`` completed: a key the job did not answer gets its failure, saying why."""
    why = error or "not computed"
    return {k: wanted[k] if k in wanted else WANTS[k].failed(why) for k in wants if k in WANTS}


def tell_wanted(evaluator: Any, candidates: Sequence[Any], recipes: Sequence[Any]) -> dict:
    """The loop's extra ``tell`` argument: ``{}`` when no candidate wants anything, else
    ``{"wanted": [answers per candidate]}`` from one wants job per wanting candidate."""
    todo = [i for i, c in enumerate(candidates) if c.wants]
    if not todo:
        return {}
    out: list[dict] = [{} for _ in candidates]
    runnable = [i for i in todo if not isinstance(recipes[i], Exception)]
    for i in set(todo) - set(runnable):
        out[i] = answers(candidates[i].wants, {}, f"decode failed: {recipes[i]}")
    results = evaluator.evaluate_wants(
        [recipes[i] for i in runnable], [candidates[i].wants for i in runnable]
    )
    for i, res in zip(runnable, results, strict=True):
        out[i] = answers(candidates[i].wants, res.wanted, res.error)
    return {"wanted": out}
