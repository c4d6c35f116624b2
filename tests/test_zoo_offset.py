"""The zoo evaluators' ``offset`` option: items [offset, offset + limit) of each task, the same
per-example answers as the full run on those items, and a clear error for a window that is
past the end (raised when the fitness is built, before any candidate is scored)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.errors import UserInputError
from evomerge.fitness import build_fitness, parse_fitness_config
from evomerge.zoo.evaluate import item_window, load_task_items

FITNESS = Path(__file__).resolve().parents[1] / "fitness"


def test_item_window_selects_offset_to_offset_plus_limit_on_a_real_task():
    items = load_task_items(FITNESS / "zoo_cipher")
    assert len(items) == 200
    assert item_window(items) == items  # defaults: every item, as before
    assert item_window(items, 0, 50) == items[:50]  # offset 0 is the old `limit` behaviour
    assert item_window(items, 50) == items[50:]  # the held-out rest of a limit-50 search
    assert item_window(items, 50, 20) == items[50:70]
    assert item_window(items, 190, 50) == items[190:]  # a window may run past the end


@pytest.mark.parametrize(
    ("offset", "limit", "match"),
    [
        (200, None, r"options\.offset: 200 is past the end of zoo task zoo_cipher \(200"),
        (-1, None, r"options\.offset: -1 is not an integer >= 0"),
        (1.5, None, r"options\.offset: 1\.5 is not an integer"),
        (True, None, r"options\.offset: True is not an integer"),
        (0, 0, r"options\.limit: 0 is not an integer >= 1"),
    ],
)
def test_bad_windows_are_user_errors_naming_the_field(offset, limit, match):
    items = load_task_items(FITNESS / "zoo_cipher")
    with pytest.raises(UserInputError, match=match):
        item_window(items, offset, limit, task="zoo_cipher")


@pytest.mark.parametrize("evaluator", ["skills", "cross", "zoo_sort"])
def test_offset_past_the_end_stops_the_fitness_build(evaluator):
    task = {"kind": "zoo", "evaluator": evaluator, "options": {"limit": 50, "offset": 250}}
    cfg = parse_fitness_config({"tasks": [task]})
    with pytest.raises(UserInputError, match=r"options\.offset: 250 is past the end"):
        build_fitness(cfg)
    ok = {"kind": "zoo", "evaluator": evaluator, "options": {"offset": 50}}
    build_fitness(parse_fitness_config({"tasks": [ok]}))  # a held-out window builds


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.zoo.build import build

    zoo = build("lm-cross", tmp_path_factory.mktemp("zoo") / "c", quick=True, progress=False)
    folder = str(zoo / "base")
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def test_offset_scores_the_same_items_as_the_full_run(base_model):
    """Real greedy evaluation of the quick lm-cross base on zoo_copy: a window's per-example
    results are the full run's results on those items, and the default is unchanged."""
    from evomerge.zoo.evaluate import EVALUATORS

    model, tok = base_model
    full = list(EVALUATORS["zoo_copy"](model, tok, limit=40).per_example)
    assert 0 < sum(full) < len(full)  # mixed right/wrong: a shifted window would show
    window = list(EVALUATORS["zoo_copy"](model, tok, limit=15, offset=20).per_example)
    assert window == full[20:35]
    tail = EVALUATORS["zoo_copy"](model, tok, offset=190)
    assert len(tail.per_example) == 10
    assert list(EVALUATORS["zoo_copy"](model, tok, limit=40, offset=0).per_example) == full
