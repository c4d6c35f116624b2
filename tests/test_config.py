"""ExperimentConfig: presets and inline parts, seeds, structural hash, clear errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from evomerge.config import ExperimentConfig, experiment_from_json, load_experiment
from evomerge.config_keys import LIST_MAX, keys_at, unknown_key_hint
from evomerge.errors import UserInputError
from evomerge.experiment import resolve_models
from evomerge.fitness.config import FitnessConfig

ROOT = Path(__file__).resolve().parents[1]

FITNESS = "fitness: {python: score.py:score}\n"


def _write(tmp_path, body: str, name: str = "exp.yaml"):
    (tmp_path / "score.py").write_text("def score(model, tok):\n    return 1.0\n")
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


BASIC = """\
    models: [a, b]
    base_model: base
    space: ps_dare_ties
    fitness: {python: score.py:score}
    driver: {name: cma_es, options: {popsize: 6}}
    budget: {max_evals: 20}
    seed: 7
"""


def test_preset_is_resolved_and_seeds_follow_the_experiment(tmp_path):
    cfg = load_experiment(_write(tmp_path, BASIC))
    assert cfg.space.kind == "parameter" and cfg.space.merge_method == "dare_ties"
    assert cfg.space.seed == 7  # DARE masks follow the experiment seed unless set
    assert cfg.base_dir == str(tmp_path.resolve())
    assert cfg.resolve_path("a") == str((tmp_path / "a").resolve())
    models, base = resolve_models(cfg)
    assert models == tuple(str((tmp_path / m).resolve()) for m in "ab")
    assert base == str((tmp_path / "base").resolve())
    # round trip through the store's JSON gives the same config and hash
    again = experiment_from_json(cfg.to_json())
    assert again == cfg and again.structural_hash() == cfg.structural_hash()


def test_preset_overrides_and_explicit_space_seed(tmp_path):
    body = BASIC.replace(
        "space: ps_dare_ties", "space: {preset: ps_dare_ties, layer_groups: 2, seed: 3}"
    )
    cfg = load_experiment(_write(tmp_path, body))
    assert cfg.space.layer_groups == 2 and cfg.space.seed == 3


def test_structural_vs_non_structural(tmp_path):
    p = _write(tmp_path, BASIC)
    cfg = load_experiment(p)
    bigger = load_experiment(p, {"budget.max_evals": 100, "workers": 1})
    assert cfg.structural_diff(bigger) == []
    assert bigger.budget.max_evals == 100
    assert cfg.structural_diff(load_experiment(p, {"seed": 8})) == ["space", "seed"]
    assert cfg.structural_diff(load_experiment(p, {"driver.options": {"popsize": 8}})) == ["driver"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("budget: {max_evals: 20}", "budget: {}"), "max_evals and/or max_seconds"),
        (("seed: 7", "seed: 7\n    sede: 1"), "unknown key 'sede'"),
        (("models: [a, b]", "models: []"), "models is empty"),
        (("models: [a, b]", "models: [a, a]"), "repeat"),
        (("space: ps_dare_ties", "space: no_such_preset"), "unknown search space preset"),
        (("budget: {max_evals: 20}", "budget: {max_evals: 0}"), "budget.max_evals"),
        (("fitness: {python: score.py:score}", "fitness: no_such_suite"), "suite 'no_such_suite'"),
        (("driver: {name: cma_es, options: {popsize: 6}}", "driver: {nme: x}"), "driver.nme"),
    ],
)
def test_errors_name_the_field(tmp_path, edit, message):
    body = BASIC.replace(*edit)
    assert body != BASIC
    with pytest.raises(UserInputError, match=message):
        load_experiment(_write(tmp_path, body))


def test_a_whole_experiment_check_reads_as_its_own_message(tmp_path):
    """A check across fields (here: models) is one plain line, not pydantic's wording."""
    with pytest.raises(UserInputError) as err:
        load_experiment(_write(tmp_path, BASIC.replace("models: [a, b]", "models: [a, a]")))
    assert str(err.value).endswith(": models ['a', 'a'] repeat a model; list each once")
    assert "Value error" not in str(err.value) and "top level" not in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"budget.max_eval": 3}, "unknown key 'budget.max_eval' — did you mean 'max_evals'?"),
        ({"archive.topk": 2}, "unknown key 'archive.topk' — did you mean 'top_k'?"),
        (
            {"fitness.racing": {"confidance": 0.7}},
            "'racing.confidance' — did you mean 'confidence'?",
        ),
        (
            {"fitness.validation": {"limit": 30}},
            "'validation.limit' — remove it or use one of: items, racing$",
        ),
        (  # a tagged union's member: the zoo task's own keys
            {"fitness.tasks": [{"kind": "zoo", "name": "s", "evaluator": "skills", "zz": 1}]},
            "'tasks.0.zz' — remove it or use one of: evaluator, kind, name, objective, options, validation_score, weight$",
        ),
        (  # a list of models inside a list: the constraint's task
            {"fitness.constraints": [{"task": {"kind": "lm_eval", "task": "t", "lmit": 1}}]},
            "'constraints.0.task.lmit' — did you mean 'limit'?",
        ),
    ],
)
def test_an_unknown_key_names_the_keys_valid_there(override, message):
    with pytest.raises(UserInputError, match=message):
        load_experiment(ROOT / "experiments" / "toy_ps_cmaes.yaml", override)


def test_an_unknown_key_among_many_points_to_the_schema():
    keys = keys_at(ExperimentConfig, ["no_such_key"])
    assert "fitness" in keys and "driver" in keys and "seed" in keys
    lm_eval = keys_at(FitnessConfig, ["tasks", 0, "lm_eval", "x"])
    assert lm_eval is not None and len(lm_eval) > LIST_MAX
    assert "evomerge schema" in unknown_key_hint(FitnessConfig, ["tasks", 0, "lm_eval", "qqqq"])
    # a path the models cannot follow keeps the plain advice
    assert unknown_key_hint(FitnessConfig, ["nope", "x"]) == "remove it or check its spelling"


def test_missing_file_and_base_dir_key(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_experiment(tmp_path / "nope.yaml")
    with pytest.raises(UserInputError, match="base_dir"):
        load_experiment(_write(tmp_path, BASIC + "    base_dir: /x\n"))


def test_zoo_reference_errors_are_clear(tmp_path):
    cfg = load_experiment(_write(tmp_path, BASIC.replace("[a, b]", "[zoo:lm, b]")))
    with pytest.raises(UserInputError, match="zoo:<zoo>/<model>"):
        resolve_models(cfg)


def test_every_shipped_experiment_validates():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "experiments"
    files = sorted(root.glob("*.yaml"))
    for f in files:
        cfg = load_experiment(f)
        assert cfg.models and cfg.budget
