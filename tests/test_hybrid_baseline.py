"""A hybrid (PS+DFS) search's bar: the parameter-space winner it starts from, scored alone
beside the experts on both splits (Akiba et al. 2024 report PS+DFS against PS), equal to that
recipe scored by `evomerge eval`."""

from __future__ import annotations

import json

import pytest

from evomerge.baselines import START_LABEL, baseline_recipes, uniform_soup_recipes
from evomerge.config import load_experiment
from evomerge.experiment import resolve_experiment
from evomerge.search_cli import search
from evomerge.store import RunStore
from evomerge.validation_baselines import baseline_scores

pytestmark = pytest.mark.timeout(600)

MODELS = "[zoo:lm-skills/cipher, zoo:lm-skills/shift, zoo:lm-skills/sort, zoo:lm-skills/reverse]"
FITNESS = """\
fitness:
  tasks: [{kind: zoo, name: skills, evaluator: skills, options: {limit: 20}}]
  validation: {items: 20}
"""
SOUP = f"""\
name: soup
models: {MODELS}
space: {{kind: parameter, merge_method: linear, layer_groups: 1, params: [weight]}}
{FITNESS}budget: {{max_evals: 4}}
"""
HYBRID = f"""\
name: hybrid
models: {MODELS}
space: {{kind: hybrid, winner: winner.yaml, partner: 0, repeats: 1, scales: per_layer}}
{FITNESS}driver: {{name: cma_es, options: {{popsize: 4}}}}
budget: {{max_evals: 4}}
"""


def test_a_hybrid_search_is_shown_against_its_parameter_space_start(tmp_path, capsys):
    from evomerge.commands.evaluate import evaluate

    # the start: the four experts averaged (any parameter-space merge of them would do)
    (tmp_path / "soup.yaml").write_text(SOUP)
    soup = resolve_experiment(load_experiment(tmp_path / "soup.yaml"), tmp_path / "s")
    ((_, start),) = uniform_soup_recipes(soup)
    (tmp_path / "winner.yaml").write_text(start.to_yaml())
    exp, run = tmp_path / "hybrid.yaml", tmp_path / "run"
    exp.write_text(HYBRID)

    labels = [lab for lab, _ in baseline_recipes(resolve_experiment(load_experiment(exp), run))]
    assert labels[-1] == START_LABEL and labels[:-1] == [
        "expert cipher", "expert shift", "expert sort", "expert reverse"
    ]  # fmt: skip
    assert search(exp, run) == 0
    printed = "".join(capsys.readouterr())
    with RunStore.open(run, readonly=True) as st:
        fit, val = baseline_scores(st)[START_LABEL]
    assert f"{START_LABEL}: fitness {fit:.4f}" in printed
    assert evaluate(tmp_path / "winner.yaml", exp, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["fitness"] == pytest.approx(fit, abs=1e-12)
    assert evaluate(tmp_path / "winner.yaml", exp, as_json=True, split="validation") == 0
    assert json.loads(capsys.readouterr().out)["fitness"] == pytest.approx(val, abs=1e-12)
