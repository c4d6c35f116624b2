"""fitness.validation.racing: the archive's members race for the best on the validation items
(evomerge.validation._race_archive), on the zoo's lm-skills experts with a real store."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from evomerge.errors import UserInputError
from evomerge.fitness import parse_fitness_config
from evomerge.search_cli import resume, search, status
from evomerge.store import RunStore
from evomerge.validation import member_line, ranking, stored, validation_item_evals
from evomerge.validation_baselines import stored_baselines
from tests.test_racing import CMA, _experiment

LIMIT = {"options": {"limit": 12}}  # the other 38 items per task are left for validation
RACED = "{items: 12, racing: {first_slice: 8, slice: 8}}"


def _run(tmp_path, name: str, validation: str):
    exp = _experiment(
        tmp_path, racing=None, driver=CMA, budget="{max_evals: 18}", name=f"{name}.yaml"
    )
    text = exp.read_text().replace("\ndriver:", f"\n  validation: {validation}\ndriver:")
    exp.write_text(text.replace("top_k: 2", "top_k: 6"))
    assert search(exp, tmp_path / name) == 0
    with RunStore.open(tmp_path / name, readonly=True) as st:
        return stored(st), ranking(st)


def test_raced_validation_scores_the_winner_in_full_and_stops_the_others(tmp_path, capsys):
    plain, by_all = _run(tmp_path, "plain", "{items: 12}")
    raced, ranked = _run(tmp_path, "raced", RACED)
    # the same search (validation runs after it): the same six archive members
    assert {m.digest for m in ranked.members} == {m.digest for m in by_all.members}
    assert set(raced) == set(plain) and len(raced) == 6
    assert ranked.by == "validation score"
    got = {d: e["items"] for d, e in raced.items()}
    assert all(e["of"] == 48 for e in raced.values())  # 4 tasks x 12 validation items
    winner = ranked.members[0]
    # the winner was scored on every item, in slices: exactly its plain validation score
    assert got[winner.digest] == 48 and not winner.stopped
    assert raced[winner.digest]["fitness"] == plain[winner.digest]["fitness"]
    # the others stopped below it on part of the items, and rank after it, even those whose
    # mean over their few items is above the winner's over all of them
    stopped = [m for m in ranked.members if m.stopped]
    assert stopped and sum(got.values()) < 6 * 48
    assert all(got[m.digest] < 48 for m in stopped)
    assert ranked.members[-len(stopped) :] == stopped
    assert any(m.validation > winner.validation for m in stopped)  # a lucky first slice
    assert f"(stopped at {got[stopped[0].digest]} of 48 items)" in member_line(stopped[0])
    with RunStore.open(tmp_path / "raced", readonly=True) as st:
        base_items = sum(e["item_evals"] for e in stored_baselines(st).values())
        assert base_items > 0 and validation_item_evals(st) == sum(got.values()) + base_items
    capsys.readouterr()
    assert status(tmp_path / "raced") == 0
    assert "(stopped at" in capsys.readouterr().out
    from evomerge.report import write_report

    write_report(tmp_path / "raced", tmp_path / "rep")
    assert " of 48 items) |" in (tmp_path / "rep" / "report.md").read_text()
    # a race killed before it was stored runs again on resume, to the same scores
    shutil.copytree(tmp_path / "raced", tmp_path / "again")
    with sqlite3.connect(tmp_path / "again" / "store.sqlite") as conn:
        conn.execute("DELETE FROM meta WHERE key = 'validation'")
    assert resume(tmp_path / "again") == 0
    with RunStore.open(tmp_path / "again", readonly=True) as st:
        assert stored(st) == raced
    # an indifference zone wider than any mean difference: all but the leader stop after the
    # first slice (as members tied on every item would with a small one)
    wide, ranked = _run(tmp_path, "wide", RACED.replace("}}", ", indifference: 0.5}}"))
    assert sorted(e["items"] for e in wide.values()) == [8] * 5 + [48]
    assert ranked.members[0].digest == winner.digest  # the same leader after that slice
    assert wide[winner.digest] == raced[winner.digest]


def test_raced_validation_is_refused_where_racing_cannot_rank():
    tasks = [
        {"kind": "zoo", "name": "one", "evaluator": "skills", "objective": "a", **LIMIT},
        {"kind": "zoo", "name": "two", "evaluator": "skills", "objective": "b", **LIMIT},
    ]
    with pytest.raises(UserInputError) as err:
        parse_fitness_config({"tasks": tasks, "validation": {"racing": {}}})
    assert "validation.racing: the fitness has 2 objectives (a, b); racing ranks one score, " in (
        str(err.value)
    )
    assert str(err.value).endswith("so remove fitness.validation.racing or use one objective")
    # unset, it is left out of the stored config: earlier runs hash the same
    one = [{"kind": "zoo", "evaluator": "skills", **LIMIT}]
    assert parse_fitness_config({"tasks": one, "validation": {}}).model_dump()["validation"] == {
        "items": None
    }


def test_a_rerace_on_resume_adds_to_the_validation_cost(tmp_path):
    """A resumed search whose archive changed races it again as a whole: the new race's
    scores replace the old ones, and the count outside the budget keeps both races' cost."""
    _run(tmp_path, "raced", RACED)
    with RunStore.open(tmp_path / "raced", readonly=True) as st:
        first, before = validation_item_evals(st), stored(st)
    # a run from before the running count: the count starts from the scores it stored
    shutil.copytree(tmp_path / "raced", tmp_path / "old")
    with sqlite3.connect(tmp_path / "old" / "store.sqlite") as conn:
        conn.execute("DELETE FROM meta WHERE key = 'validation_item_evals'")
    for run in ("raced", "old"):
        assert resume(tmp_path / run, max_evals=36) == 0
        with RunStore.open(tmp_path / run, readonly=True) as st:
            after, members = stored(st), {m.digest for m in st.archive()}
            assert after != before  # raced again
            raced = sum(e["items"] for d, e in after.items() if d in members)
            assert validation_item_evals(st) == first + raced, run
