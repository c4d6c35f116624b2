"""A user's YAML: a key given twice is refused (PyYAML would keep the last silently), and every
YAML error is one line naming the file and the line. Real files through the real loaders and
the real CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from evomerge.config import load_experiment
from evomerge.errors import UserInputError
from evomerge.io.yaml_read import read_yaml
from evomerge.recipe import Recipe
from evomerge.recipe_mergekit import from_mergekit_yaml
from tests.test_config import BASIC, _write


def test_a_key_given_twice_is_refused_with_both_lines():
    with pytest.raises(UserInputError) as err:
        read_yaml("a: 1\nb:\n  c: 2\n  c: 3\n", "x.yaml")
    assert str(err.value) == (
        "x.yaml: not valid YAML (line 4: key 'c' is given twice (first on line 3); keep one)"
    )
    with pytest.raises(UserInputError, match="key 'w' is given twice"):
        read_yaml("p: {w: 1, w: 2}\n", "x.yaml")  # in a flow mapping, on one line


def test_merge_keys_may_be_overridden():
    data = read_yaml("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n", "x.yaml")
    assert data["use"] == {"x": 1, "y": 3}


def test_a_syntax_error_is_one_line_with_its_place():
    with pytest.raises(UserInputError) as err:
        read_yaml("name: x\nmodels: [a, b\nspace: foo\n", "x.yaml")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("x.yaml: not valid YAML (line 3, column 6: expected ',' or ']'")
    assert text.endswith("(while parsing a flow sequence on line 2))")


def test_every_loader_refuses_a_repeated_key(tmp_path):
    twice = BASIC + "    budget: {max_evals: 40}\n"
    with pytest.raises(UserInputError, match=r"exp\.yaml: .*key 'budget' is given twice"):
        load_experiment(_write(tmp_path, twice))
    recipe = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1, weight: 2}\n"
    with pytest.raises(UserInputError, match="r.yaml: .*key 'weight' is given twice"):
        Recipe.from_yaml(recipe, origin="r.yaml")
    with pytest.raises(UserInputError, match="m.yaml: .*key 'weight' is given twice"):
        from_mergekit_yaml(recipe, origin="m.yaml")


def test_the_cli_prints_one_line_and_writes_nothing(tmp_path):
    exp = _write(tmp_path, BASIC + "    seed: 8\n")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "evomerge.cli", "search", str(exp), "--run-dir", str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {exp}: not valid YAML (line 8: key 'seed' is given twice (first on line 7); "
        "keep one)"
    ]
    assert not run.exists()
