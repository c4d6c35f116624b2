"""The task-arithmetic baseline (Ilharco et al. 2023): scored before the search over a grid of
lambdas on lm-skills' real zoo, the best lambda on the search's items kept beside the experts
and the base, validated with them, exported by `export --task-arithmetic`, equal to that
recipe scored by `evomerge eval`, raced under fitness.racing, skipped where it does not apply
and refused in one line when mis-set; and the uniform soup, the bar where there is no base
model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from evomerge.baselines import race_the_grid, task_arithmetic_recipes, uniform_soup_recipes
from evomerge.config import load_experiment
from evomerge.errors import UserInputError
from evomerge.experiment import resolve_experiment
from evomerge.recipe import Recipe
from evomerge.search_cli import export, search, status
from evomerge.store import RunStore
from evomerge.validation_baselines import baseline_scores

pytestmark = pytest.mark.timeout(600)

EXPERIMENT = """\
name: ta
models: [zoo:lm-skills/cipher, zoo:lm-skills/shift, zoo:lm-skills/sort, zoo:lm-skills/reverse]
base_model: zoo:lm-skills/base
space: {preset: ps_dare_ties, layer_groups: 1}
fitness:
  tasks: [{kind: zoo, name: skills, evaluator: skills, options: {limit: 20}}]
  validation: {items: 20}
driver: {name: cma_es, options: {popsize: 4}}
budget: {max_evals: 4}
"""


def _write(tmp_path, text: str = EXPERIMENT, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_search_keeps_the_best_lambda_beside_the_experts_and_validates_it(tmp_path, capsys):
    exp, run = _write(tmp_path), tmp_path / "run"
    assert search(exp, run) == 0
    got = capsys.readouterr()
    printed = got.out + got.err  # (the progress lines go to stderr)
    with RunStore.open(run, readonly=True) as st:
        stored = json.loads(st.get_meta("baselines"))
        both = baseline_scores(st)
    assert list(stored)[:5] == [
        "expert cipher",
        "expert shift",
        "expert sort",
        "expert reverse",
        "base",
    ]
    (label,) = [k for k in stored if k.startswith("task arithmetic")]
    entry = stored[label]
    grid = entry["lambdas"]
    assert list(grid) == ["0.25", "0.5", "0.75", "1"]
    best = max(grid.values())
    assert entry["fitness"] == best
    first_best = next(lam for lam, v in grid.items() if v == best)
    assert label == f"task arithmetic λ={first_best}"
    assert f"{label}: fitness {best:.4f} (best of λ 0.25, 0.5, 0.75, 1)" in printed
    # on lm-skills four task vectors at full strength wreck the base (docs/zoo.md): λ=1 loses
    assert grid["1"] < best
    # validated with the experts, on the items after the search's
    fit, held_out = both[label]
    assert fit == best and held_out is not None and math.isfinite(held_out)
    assert f"{label:<31} validation {held_out:.4f}  search {fit:.4f}" in printed
    grid_line = "task arithmetic on the search items: " + ", ".join(
        f"λ {lam} {v:.4f}" for lam, v in grid.items()
    )
    assert status(run) == 0
    shown = capsys.readouterr().out
    assert f"{label} {fit:.4f} (validation {held_out:.4f})" in shown and grid_line in shown
    from evomerge.report import write_report

    write_report(run, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert grid_line in md and f"| {label} | {fit:.4f} | {held_out:.4f} |" in md

    # `export --task-arithmetic` writes the chosen lambda's recipe; scored by `evomerge eval`
    # it gives the stored numbers on both splits.
    from evomerge.commands.evaluate import evaluate

    cfg = load_experiment(exp)
    ex = resolve_experiment(cfg, run)
    (recipe,) = [r for lab, r in task_arithmetic_recipes(ex) if lab == label]
    recipe_path = tmp_path / "ta.yaml"
    assert export(run, recipe_path, task_arithmetic=True) == 0
    wrote = capsys.readouterr().out
    assert f"{label}, search fitness {fit:.4f}, validation {held_out:.4f}" in wrote
    assert Recipe.load(recipe_path).digest() == recipe.digest()
    assert export(run, tmp_path / "ta_mergekit.yaml", "mergekit", task_arithmetic=True) == 0
    capsys.readouterr()
    mk = yaml.safe_load((tmp_path / "ta_mergekit.yaml").read_text())
    assert mk["merge_method"] == "task_arithmetic" and len(mk["models"]) == 4
    with pytest.raises(UserInputError, match="--rank picks an archive member"):
        export(run, tmp_path / "x.yaml", rank=2, task_arithmetic=True)
    assert evaluate(recipe_path, exp, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["fitness"] == pytest.approx(best, abs=1e-12)
    assert evaluate(recipe_path, exp, as_json=True, split="validation") == 0
    assert json.loads(capsys.readouterr().out)["fitness"] == pytest.approx(held_out, abs=1e-12)


def test_with_racing_the_grid_is_raced_for_its_best(tmp_path, capsys):
    """Under ``fitness.racing`` the lambdas race for the best (the search's slices and item
    order): on the shipped racing example the three weak lambdas stop early and the best is
    scored on every item, to the value `evomerge eval` gives its recipe, at under half the
    grid's full cost."""
    from evomerge.commands.evaluate import evaluate

    exp = Path(__file__).parent.parent / "experiments" / "toy_cross_racing.yaml"
    run = tmp_path / "run"
    assert search(exp, run, max_evals=8) == 0
    with RunStore.open(run, readonly=True) as st:
        stored = json.loads(st.get_meta("baselines"))
    (label,) = [k for k in stored if k.startswith("task arithmetic")]
    entry = stored[label]
    raced, grid = entry["raced"], entry["lambdas"]
    of, best = raced["of"], entry["fitness"]
    assert raced["stopped"] and all(0 < m < of for m in raced["stopped"].values())
    assert label == f"task arithmetic λ={max(grid, key=grid.get)}" and best == max(grid.values())
    assert set(raced["stopped"]) | {label.split("=")[1]} == set(grid)  # all but the best stop
    spent = sum(raced["stopped"].values()) + of
    assert spent <= len(grid) * of / 2
    printed = capsys.readouterr()
    stops = ", ".join(f"λ {lam} on {m}" for lam, m in raced["stopped"].items())
    assert f"raced, stopped early: {stops} of {of} items)" in printed.out + printed.err
    assert status(run) == 0
    shown = capsys.readouterr().out
    for lam, m in raced["stopped"].items():
        assert f"λ {lam} {grid[lam]:.4f} ({m} of {of} items)" in shown
    # what the baselines and validation cost beside the search's budget: the experts and the
    # base on every item, the raced grid; the winner and four baselines on 100 held-out items
    assert f"outside the budget: baselines {3 * of + spent}, validation {5 * 100}" in shown
    recipe_path = tmp_path / "ta.yaml"
    assert export(run, recipe_path, task_arithmetic=True) == 0
    capsys.readouterr()
    assert evaluate(recipe_path, exp, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["fitness"] == pytest.approx(best, abs=1e-12)


def test_the_grid_is_raced_only_where_it_saves_wall_time_too():
    """One batch scores every baseline in one wave when the workers can hold them all; the
    race (the models alone, then rounds of slices) would double that wall time."""
    assert race_the_grid(4, 3, workers=1) and race_the_grid(4, 3, workers=6)
    assert not race_the_grid(4, 3, workers=7) and not race_the_grid(4, 3, workers=16)
    assert not race_the_grid(1, 3, workers=1)  # one lambda: nothing to race for


LATE_PY = """\
import json
from pathlib import Path

from safetensors.torch import load_file

NAME = "model.layers.0.mlp.up_proj.weight"
BASE = load_file("{base}/model.safetensors")[NAME]


def score(model, tokenizer, items=None):
    # 0 on the items racing scores first (listed in first.json); each other item is the
    # merge's distance from the base in one matrix, lambda times that of the summed task
    # vectors: the best lambda shows only after the first slice
    first = set(json.loads((Path(__file__).parent / "first.json").read_text()))
    dist = float((model.state_dict()[NAME].float() - BASE.float()).norm())
    vals = [0.0 if p in first else dist for p in (range(40) if items is None else items)]
    return vals if items is not None else sum(vals) / len(vals)


score.n_items = 40
"""


def test_lambdas_tied_on_the_first_items_are_not_raced_out(tmp_path):
    """On a hard target every lambda scores 0 on the first slice; the search's indifference
    zone would call them tied and stop all but the first. The grid races without it, so the
    best lambda, seen only after the first slice, is still the one kept, scored on every
    item."""
    from evomerge.fitness import build_fitness
    from evomerge.fitness.items import ItemPool
    from tests.helpers.search_fixtures import make_family

    family = make_family(tmp_path / "family")
    (tmp_path / "late.py").write_text(LATE_PY.format(base=family["base"]))
    (tmp_path / "first.json").write_text("[]")
    experts = "".join(f"\n  - {e}" for e in family["experts"])
    exp = _write(
        tmp_path,
        f"""\
name: late
models:{experts}
base_model: {family["base"]}
space: {{kind: parameter, merge_method: task_arithmetic, layer_groups: 1, params: [weight]}}
fitness:
  python: late.py:score
  racing: {{first_slice: 20, slice: 10, confidence: 0.8, indifference: 0.01}}
driver: {{name: cma_es, options: {{popsize: 4}}}}
budget: {{max_evals: 4}}
""",
    )
    cfg = load_experiment(exp)
    pool = ItemPool.build(build_fitness(cfg.fitness, base_dir=tmp_path), cfg.seed)
    ((_, first),) = pool.positions(0, 20).items()
    (tmp_path / "first.json").write_text(json.dumps(first))
    run = tmp_path / "run"
    assert search(exp, run) == 0
    with RunStore.open(run, readonly=True) as st:
        stored = json.loads(st.get_meta("baselines"))
    (label,) = [k for k in stored if k.startswith("task arithmetic")]
    entry = stored[label]
    assert label == "task arithmetic λ=1" and entry["fitness"] > 0
    # each weaker lambda stopped once the next slice told them apart, not on the tied ones
    assert entry["raced"] == {"stopped": {"0.25": 30, "0.5": 30, "0.75": 30}, "of": 40}
    full = entry["fitness"] * 40 / 20  # lambda 1's distance: its value on each later item
    for lam in ("0.25", "0.5", "0.75"):  # the mean over 30 items, 10 of them at its distance
        assert entry["lambdas"][lam] == pytest.approx(float(lam) * full / 3)


def test_where_it_does_not_apply_there_is_none(tmp_path):
    def recipes(text: str):
        cfg = load_experiment(_write(tmp_path, text))
        return task_arithmetic_recipes(resolve_experiment(cfg, tmp_path / "run"))

    full = recipes(EXPERIMENT)
    assert [lab for lab, _ in full] == [f"task arithmetic λ={x}" for x in (0.25, 0.5, 0.75, 1)]
    for _, r in full:  # every expert at weight λ against the base; the space's dtype
        assert r.merge_method == "task_arithmetic" and r.base_model and len(r.models) == 4
    assert full[1][1].models[0].parameters == {"weight": 0.5}
    assert recipes(EXPERIMENT + "baselines: {task_arithmetic: [0.3]}\n")[0][0].endswith("0.3")
    assert recipes(EXPERIMENT + "baselines: {task_arithmetic: []}\n") == []
    assert recipes(EXPERIMENT.replace("base_model: zoo:lm-skills/base\n", "")) == []
    soup = uniform_soup_recipes(
        resolve_experiment(load_experiment(_write(tmp_path, SOUP)), tmp_path / "run")
    )
    assert [lab for lab, _ in soup] == ["uniform soup"]
    assert [m.parameters for m in soup[0][1].models] == [{"weight": 1.0}] * 4
    with_base = resolve_experiment(load_experiment(_write(tmp_path, EXPERIMENT)), tmp_path / "r")
    assert uniform_soup_recipes(with_base) == []  # task arithmetic is the bar there
    off = _write(tmp_path, SOUP + "baselines: {uniform_soup: false}\n")
    assert uniform_soup_recipes(resolve_experiment(load_experiment(off), tmp_path / "o")) == []
    soup_dfs = SOUP.replace(
        "{kind: parameter, merge_method: linear, layer_groups: 1, params: [weight]}",
        "{kind: dataflow}",
    )
    assert (
        uniform_soup_recipes(
            resolve_experiment(load_experiment(_write(tmp_path, soup_dfs)), tmp_path / "d")
        )
        == []
    )
    dataflow = EXPERIMENT.replace("{preset: ps_dare_ties, layer_groups: 1}", "{kind: dataflow}")
    assert recipes(dataflow) == []


SOUP = """\
name: soup
models: [zoo:lm-skills/cipher, zoo:lm-skills/shift, zoo:lm-skills/sort, zoo:lm-skills/reverse]
space: {kind: parameter, merge_method: linear, layer_groups: 1, params: [weight]}
fitness:
  tasks: [{kind: zoo, name: skills, evaluator: skills, options: {limit: 20}}]
  validation: {items: 20}
driver: {name: cma_es, options: {popsize: 4}}
budget: {max_evals: 4}
"""


def test_without_a_base_model_the_bar_is_the_uniform_soup(tmp_path, capsys):
    """No base model, so no task vectors: the bar is the plain average of the models (Model
    soups, Wortsman et al. 2022), scored beside the experts and validated with them, to the
    value `evomerge eval` gives a linear merge of every model at weight 1."""
    from evomerge.commands.evaluate import evaluate
    from evomerge.report_data import model_rows

    exp, run = _write(tmp_path, SOUP), tmp_path / "run"
    assert search(exp, run) == 0
    printed = capsys.readouterr()
    with RunStore.open(run, readonly=True) as st:
        stored = json.loads(st.get_meta("baselines"))
        both = baseline_scores(st)
    assert list(stored) == [f"expert {e}" for e in ("cipher", "shift", "sort", "reverse")] + [
        "uniform soup"
    ]
    fit, held_out = both["uniform soup"]
    assert fit is not None and held_out is not None and math.isfinite(held_out)
    assert f"uniform soup: fitness {fit:.4f}" in printed.out + printed.err
    kinds = {r.name: r.kind for r in model_rows([], stored)}
    assert kinds["uniform soup"] == "simple" and kinds["expert cipher"] == "expert"
    models = "".join(
        f"\n  - model: zoo:lm-skills/{e}\n    parameters: {{weight: 0.3}}"
        for e in ("cipher", "shift", "sort", "reverse")
    )
    (tmp_path / "avg.yaml").write_text(f"merge_method: linear\nmodels:{models}\n")
    assert evaluate(tmp_path / "avg.yaml", exp, as_json=True) == 0  # equal weights, normalized
    assert json.loads(capsys.readouterr().out)["fitness"] == pytest.approx(fit, abs=1e-6)
    assert evaluate(tmp_path / "avg.yaml", exp, as_json=True, split="validation") == 0
    assert json.loads(capsys.readouterr().out)["fitness"] == pytest.approx(held_out, abs=1e-6)
    # `export --soup` writes that recipe, and `evomerge eval` of it gives the stored score
    assert export(run, tmp_path / "soup.yaml", soup=True) == 0
    wrote = capsys.readouterr().out
    assert f"uniform soup, search fitness {fit:.4f}, validation {held_out:.4f}" in wrote
    (soup,) = uniform_soup_recipes(resolve_experiment(load_experiment(exp), run))
    assert Recipe.load(tmp_path / "soup.yaml").digest() == soup[1].digest()
    assert evaluate(tmp_path / "soup.yaml", exp, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["fitness"] == pytest.approx(fit, abs=1e-12)
    # the base plus a quarter of the four task vectors is the same average, computed another way
    ta = f"merge_method: task_arithmetic\nbase_model: zoo:lm-skills/base\nmodels:{models}\n"
    (tmp_path / "ta.yaml").write_text(ta.replace("weight: 0.3", "weight: 0.25"))
    assert evaluate(tmp_path / "ta.yaml", exp, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["fitness"] == pytest.approx(fit, abs=1e-6)


def test_export_of_a_run_without_the_baseline_is_refused(tmp_path):
    text = EXPERIMENT.replace("budget: {max_evals: 4}", "budget: {max_evals: 2}")
    exp, run = _write(tmp_path, text + "baselines: {task_arithmetic: []}\n"), tmp_path / "run"
    assert search(exp, run) == 0
    with pytest.raises(UserInputError, match="has no task-arithmetic baseline that scored"):
        export(run, tmp_path / "ta.yaml", task_arithmetic=True)
    with pytest.raises(UserInputError, match="--soup: .* has no uniform-soup baseline"):
        export(run, tmp_path / "ta.yaml", soup=True)  # a base model: task arithmetic's run
    with pytest.raises(UserInputError, match="give one"):
        export(run, tmp_path / "ta.yaml", task_arithmetic=True, soup=True)
    assert not (tmp_path / "ta.yaml").exists()


@pytest.mark.parametrize("bad", ["[0]", "[0.5, 0.5]", "[-1]", "[20]"])
def test_a_bad_lambda_is_refused_in_one_line(tmp_path, bad):
    path = _write(tmp_path, EXPERIMENT + f"baselines: {{task_arithmetic: {bad}}}\n")
    with pytest.raises(UserInputError) as err:
        load_experiment(path)
    text = str(err.value)
    assert "\n" not in text and "baselines.task_arithmetic" in text and "(0, 10]" in text
