"""Validation re-scoring of a run's archive, and the ranking that picks the winner.

The search ranks candidates on its own items; its best there is biased upwards (selection over
many noisy candidates). With ``fitness.validation`` set, every archive member is scored once on
the validation items (``evomerge.fitness.validation``) through the same evaluator code, serial
or Ray, after the search and after each resume. The scores live in the store's ``meta`` table
under ``validation`` (JSON ``{digest: {fitness, scores, error}}``), written after each chunk of
workers' results: a digest already there is never scored again, and a killed re-scoring
continues where it stopped. A member's validation score depends only on its recipe and the
seed (``run_job`` seeds each job from them), so a resumed run gets the same numbers. With
``fitness.validation.racing`` the members race for the best on the validation items instead
(``_race_archive``): the winner is scored on all of them, the others stop once surely below it.

The winner (``export`` without ``--rank``, ``search``'s winner line, ``status``'s #1) is the
best on validation once every member has its validation score; until then the search order
stands and the output says that validation is pending.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evomerge.recipe import Recipe

META_KEY = "validation"
# meta: every item evaluation validation has stored, summed (a re-raced archive's earlier
# scores are replaced in META_KEY, their cost stays here)
SPENT_KEY = "validation_item_evals"
BY_VALIDATION = "validation score"
BY_SEARCH = "search fitness"
# after a search fitness that racing.archive_places 0 left as a mean over part of the items
ESTIMATE_NOTE = " (estimate)"


@dataclass(frozen=True)
class Member:
    """One archive member: its search fitness and, once scored, its validation score."""

    digest: str
    idx: int
    fitness: float
    validated: bool = False
    validation: float = math.nan  # NaN: validation failed (see error)
    error: str | None = None
    comparable: bool = True  # False: validation scores another metric than the search
    estimate: bool = False  # racing.archive_places 0: fitness is a mean over part of the items
    # fitness.validation.racing: the validation items this member was scored on, of how many
    # (a member stopped below the leader has a mean over part of them; None: every item)
    validation_items: tuple[int, int] | None = None

    @property
    def stopped(self) -> bool:
        """Stopped in validation's race: its score is a mean over part of the items."""
        return (
            self.validation_items is not None
            and self.validation_items[0] < self.validation_items[1]
        )

    @property
    def stop_note(self) -> str:
        """`` (stopped at k of N items)`` after a stopped member's validation score, else ''."""
        if not self.stopped:
            return ""
        got, of = self.validation_items
        return f" (stopped at {got} of {of} items)"

    @property
    def estimate_note(self) -> str:
        """``ESTIMATE_NOTE`` after an estimated search fitness, else ''."""
        return ESTIMATE_NOTE if self.estimate else ""

    @property
    def gap(self) -> float:
        """search fitness - validation score: how much of the lead was selection (NaN when
        the two are different metrics, e.g. a log-likelihood and exact match)."""
        return self.fitness - self.validation if self.comparable else math.nan


@dataclass(frozen=True)
class Ranking:
    members: list[Member]
    by: str  # BY_VALIDATION or BY_SEARCH
    enabled: bool  # fitness.validation is set
    pending: int  # members still without a validation score
    comparable: bool = True  # False: validation scores another metric (``same_metric``)

    @property
    def on_validation(self) -> bool:
        """The winner was chosen on the validation items (every member has its score)."""
        return self.by == BY_VALIDATION

    def winner_note(self) -> str:
        if self.by == BY_VALIDATION:
            return "winner by validation score"
        if self.enabled and self.pending:
            return f"winner by search fitness: {self.pending} archived model(s) not validated yet"
        return "winner by search fitness"


def stored(store: Any) -> dict[str, dict]:
    return store.get_json(META_KEY, {})


def check_buildable(cfg: Any) -> None:
    """Build the validation fitness once here (files, functions, item windows), so a split
    that cannot be scored stops the search before it starts, not after its budget."""
    if cfg.fitness.validation is not None:
        from evomerge.fitness import build_fitness

        build_fitness(cfg.fitness, base_dir=Path(cfg.base_dir), split="validation")


def ranking(store: Any, enabled: bool | None = None) -> Ranking:
    """The archive in winner order: by validation when every member has a score, else as the
    search ranked it. Failed validations go last. ``enabled`` None: as the run's config says."""
    fitness = json.loads(store.config_json())["fitness"]
    if enabled is None:
        enabled = fitness.get("validation") is not None
    done = stored(store) if enabled else {}
    same = same_metric(fitness)
    partial = store.partial_idx()
    members = []
    for e in store.archive():
        v = done.get(e.digest)
        val = math.nan if v is None or v.get("fitness") is None else float(v["fitness"])
        err = v.get("error") if v else None
        got = (int(v["items"]), int(v["of"])) if v and "items" in v else None
        members.append(
            Member(e.digest, e.idx, e.fitness, v is not None, val, err, same, e.idx in partial, got)
        )
    pending = sum(1 for m in members if not m.validated)
    if not enabled or pending or not members:
        return Ranking(members, BY_SEARCH, enabled, pending, same)
    # a member validation's race stopped has a mean over part of the items: it ranks after
    # those scored on every item (the race stopped it below one of them, on the same items)
    order = sorted(
        range(len(members)),
        key=lambda i: (
            math.isnan(members[i].validation),
            members[i].stopped,
            -members[i].validation,
            i,
        ),
    )
    return Ranking([members[i] for i in order], BY_VALIDATION, enabled, 0, same)


def same_metric(fitness: dict) -> bool:
    """Whether the validation split scores every task by the search's metric (a stored
    fitness config): not when a task names another (``validation_task``,
    ``validation_score``), so search and validation scores have no gap to show."""
    for t in fitness["tasks"]:
        if t.get("validation_task") not in (None, t.get("task")):
            return False
        score = t.get("options", {}).get("score", "exact_match")
        if t.get("validation_score") not in (None, score):
            return False
    return True


def rescore_archive(
    cfg: Any,
    store: Any,
    make_evaluator: Callable[[], Any],
    say: Callable[[str], None] | None = None,
    baselines: Sequence[tuple[str, Recipe]] = (),
) -> int:
    """Score every archive member that has no validation score yet, then the ``baselines``
    (label, recipe: the experts and the base, ``evomerge.validation_baselines``) that have
    none, with one evaluator; returns how many members. ``make_evaluator()`` gives the
    search's evaluator switched to the validation split, or a new one on it (the builder
    passes it, so this module needs no builder); it is closed at the end."""
    from evomerge.validation_baselines import META_KEY as BASELINES_KEY
    from evomerge.validation_baselines import baselines_to_validate, stored_baselines

    if cfg.fitness.validation is None:
        return 0
    done = stored(store)
    todo = [e for e in store.archive() if e.digest not in done]
    base_todo = baselines_to_validate(store, baselines)
    if not todo and not base_todo:
        return 0
    chunk = max(1, cfg.workers)  # one result per worker at a time reaches the store
    evaluator = make_evaluator()
    try:
        if todo and cfg.fitness.validation.racing is not None:
            todo = _race_archive(cfg, store, evaluator, done, say)  # the whole archive races
        elif todo:
            if say:
                say(f"validation: scoring {len(todo)} archived model(s) on held-out items")
            recipes = [Recipe.from_yaml(store.trial(e.idx).recipe_yaml) for e in todo]
            named = [(e.digest, e.digest[:12], r) for e, r in zip(todo, recipes, strict=True)]
            _score_in_chunks(evaluator, store, META_KEY, named, done, chunk, say)
        if base_todo and say:
            n = len(base_todo)
            say(f"validation: scoring the {n} baseline(s) on held-out items")
        named = [(label, label, r) for label, r in base_todo]
        _score_in_chunks(
            evaluator, store, BASELINES_KEY, named, stored_baselines(store), chunk, say
        )
    finally:
        evaluator.close()
    return len(todo)


def _score_in_chunks(evaluator, store, key: str, todo: list, done: dict, chunk: int, say) -> None:
    """Score ``todo`` ((entry key, name shown, recipe)) on every validation item, storing
    ``done`` under the meta ``key`` after each ``chunk`` of results."""
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        results = evaluator.evaluate([recipe for *_, recipe in part])
        for (k, shown, _), r in zip(part, results, strict=True):
            done[k] = _entry(r)
            if say and not r.ok:
                say(f"validation of {shown} failed: {r.error}")
        _store_spent(store, key, done, sum(r.item_evals for r in results))


def _store_spent(store, key: str, done: dict, spent: int) -> None:
    """``done`` under the meta ``key`` and ``spent`` added to the validation's item count, in
    one transaction (a kill between them would drop the cost of scores kept)."""
    total = (validation_item_evals(store) or 0) + int(spent)
    store.set_metas({key: json.dumps(done, sort_keys=True), SPENT_KEY: json.dumps(total)})


def _race_archive(
    cfg: Any,
    store: Any,
    evaluator: Any,
    done: dict[str, dict],
    say: Callable[[str], None] | None,
) -> list:
    """``fitness.validation.racing``: every archive member races for the best on the
    validation items (``evomerge.racing`` with a need of 1 and no archive place): the leader
    is scored on every item, the others stop once surely below it and keep their mean over
    the items they got (``items`` in their entry). The race is one unit, stored when it ends:
    a killed race runs again, the same (each slice is a job seeded by its recipe), and an
    archive that changed since (a resumed search) races again as a whole, so every score in
    the winner's race was drawn against the same leader."""
    from evomerge.fitness import build_fitness
    from evomerge.fitness.config import RacingConfig
    from evomerge.fitness.items import ItemPool
    from evomerge.racing import Racer

    members = store.archive()
    v = cfg.fitness.validation.racing
    fitness = build_fitness(cfg.fitness, base_dir=Path(cfg.base_dir), split="validation")
    pool = ItemPool.build(fitness, cfg.seed)
    rules = RacingConfig(**v.model_dump())  # its fields are a subset of fitness.racing's
    racer = Racer(rules, pool, fitness, need=1, places=0)
    if say:
        say(
            f"validation: racing {len(members)} archived model(s) for the best on "
            f"{pool.size} held-out items"
        )
    recipes = [Recipe.from_yaml(store.trial(e.idx).recipe_yaml) for e in members]
    outcome = racer.race(evaluator, recipes, [])
    for e, r, m in zip(members, outcome.results, outcome.items, strict=True):
        done[e.digest] = {**_entry(r), "items": m, "of": pool.size}
        if say and not r.ok:
            say(f"validation of {e.digest[:12]} failed: {r.error}")
    _store_spent(store, META_KEY, done, sum(outcome.items))
    return members


def _entry(r: Any) -> dict:
    def finite(v: float) -> float | None:
        return float(v) if v is not None and math.isfinite(v) else None

    scores = r.result.scores if r.result is not None else {}
    return {
        "fitness": finite(r.fitness) if r.ok else None,
        "scores": {k: finite(v) for k, v in scores.items()},
        "error": r.error,
        "item_evals": r.item_evals,
    }


def validation_item_evals(store: Any) -> int | None:
    """The item evaluations validation spent (archive members and baselines, outside the
    budget), a re-raced archive's earlier races included; None before any. A run from before
    the running count: the sum over the scores stored (None when an entry lacks it), which
    the count starts from when such a run is resumed."""
    from evomerge.validation_baselines import stored_baselines

    spent = store.get_json(SPENT_KEY)
    if spent is not None:
        return int(spent)
    entries = [*stored(store).values(), *stored_baselines(store).values()]
    if not entries or any("item_evals" not in e for e in entries):
        return None
    return sum(int(e["item_evals"]) for e in entries)


def member_line(m: Member) -> str:
    """``validation 0.6100  search 0.6500  gap +0.0400`` (or why it has none); a search
    fitness racing estimated from part of the items reads ``search 0.6500 (estimate)``."""
    search = f"search {m.fitness:.4f}{m.estimate_note}"
    if not m.validated:
        return f"{search}  validation pending"
    if math.isnan(m.validation):
        return f"{search}  validation FAIL"
    val = f"validation {m.validation:.4f}{m.stop_note}"
    if not m.comparable:
        return f"{val}  {search}  (another metric: no gap)"
    return f"{val}  {search}  gap {m.gap:+.4f}"
