"""fitness.constraints (Deb's feasibility rules, evomerge/fitness/constraints.py), end to end:
real CLI subprocesses merging tiny Llamas with a python fitness, real SQLite, real Optuna.

The constraint caps the objective's own score (``score <= cap``), so the search is pulled
across the bound all the time: infeasible candidates are common and better than every feasible
one, and none may enter the archive or be the winner.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from evomerge.errors import UserInputError
from evomerge.fitness.config import parse_fitness_config
from evomerge.fitness.constraints import INFEASIBLE_FLOOR, Constraints, penalised
from tests.helpers.kill_resume import kill_at_random
from tests.helpers.search_fixtures import make_family, write_experiment
from tests.test_resume import ENV, _cli, _snapshot

pytestmark = pytest.mark.timeout(300)

CAP = -4.23  # between the tiny family's experts (about -4.26) and CMA-ES's best (about -4.19)


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict:
    return make_family(tmp_path_factory.mktemp("models"))


def _constrained(tmp: Path, family: dict, cap: float = CAP, name: str = "exp.yaml") -> Path:
    exp = write_experiment(tmp, family, max_evals=25, popsize=5, name=name)
    text = exp.read_text().replace(
        "fitness: {python: score.py:score}",
        "fitness:\n"
        "  tasks: [{kind: python, function: score.py:score}]\n"
        "  constraints:\n"
        f"    - {{task: {{kind: python, function: score.py:score, name: cap}}, max: {cap}}}",
    )
    exp.write_text(text)
    return exp


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), env=ENV, capture_output=True, text=True)


def test_constrained_cma_es_archives_only_feasible_and_resumes_exactly(tmp_path, capsys, family):
    from evomerge.commands.status import status

    exp = _constrained(tmp_path, family)
    full = tmp_path / "full"
    done = _run("search", str(exp), "--run-dir", str(full))
    assert done.returncode == 0, done.stderr

    trials, archive, files = _snapshot(full)
    scores = {idx: json.loads(s) for idx, *_, s in trials}
    infeasible = [i for i, s in scores.items() if s["cap"] > CAP]
    feasible = [i for i, s in scores.items() if s["cap"] <= CAP]
    assert infeasible and feasible  # the bound really cuts the search in two
    best_any = max(s["score"] for s in scores.values())
    assert archive and files
    for _rank, _digest, idx, fitness in archive:
        assert idx in feasible and fitness <= CAP
    assert max(f for *_, f in archive) < best_any  # a better, infeasible one was kept out
    winner = archive[0]
    assert f"winner {winner[1][:12]}" in done.stdout

    status(full)
    shown = capsys.readouterr().out
    assert "constraint cap <= -4.23" in shown, shown
    assert f"{len(infeasible)} infeasible" in shown
    _check_fitness_plot(full, tmp_path / "report", set(infeasible), winner[3])

    # killed once in the search and once in its resume (2 kills keep the test short; the
    # exhaustive kill test is tests/test_resume.py), then resumed to the end
    killed, rng = tmp_path / "killed", random.Random(7)
    assert kill_at_random(
        _cli("search", str(exp), "--run-dir", str(killed)),
        killed,
        rng,
        ENV,
        within_s=0.25,
        deadline_s=120,
    )
    assert kill_at_random(
        _cli("resume", str(killed)), killed, rng, ENV, within_s=0.25, deadline_s=120
    )
    last = _run("resume", str(killed))
    assert last.returncode == 0, last.stderr
    assert _snapshot(killed) == (trials, archive, files)

    # a changed bound is a changed fitness: the resume is refused, in one line
    changed = _constrained(tmp_path, family, cap=-4.25, name="changed.yaml")
    res = _run("resume", str(killed), "--config", str(changed))
    assert res.returncode == 2
    assert "structural config changed (fitness)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def _check_fitness_plot(run: Path, out: Path, infeasible: set[int], winner: float) -> None:
    """The report's fitness plot draws infeasible candidates hollow, under their own legend
    entry, and its best-so-far curve ends at the (feasible) winner, not above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evomerge.report import write_report
    from evomerge.report_data import model_rows
    from evomerge.report_plots import draw_fitness
    from evomerge.store import RunStore

    assert (out / "fitness.png") in write_report(run, out)
    assert f"{len(infeasible)} infeasible" in (out / "report.md").read_text()
    with RunStore.open(run, readonly=True) as st:
        trials = st.trials()
    fig, ax = plt.subplots()
    draw_fitness(ax, trials, model_rows([], {}), infeasible)
    lines = {ln.get_label(): ln for ln in ax.lines}
    hollow = lines[f"infeasible candidate ({len(infeasible)})"]
    assert hollow.get_markerfacecolor() == "none"
    at = {i + 1: t.fitness for i, t in enumerate(trials) if t.idx in infeasible}
    assert dict(zip(hollow.get_xdata(), hollow.get_ydata(), strict=True)) == at
    filled = lines[f"feasible candidate ({sum(t.ok for t in trials) - len(infeasible)})"]
    assert filled.get_markerfacecolor() != "none"
    assert lines["best so far (feasible)"].get_ydata()[-1] == winner < max(at.values())
    plt.close(fig)


def test_no_feasible_candidate_means_no_winner_and_no_export(tmp_path, capsys, family):
    from evomerge.commands.export import export
    from evomerge.commands.search import search
    from evomerge.commands.status import status

    exp = _constrained(tmp_path, family, cap=-100.0)  # no merge scores that low
    text = exp.read_text().replace("max_evals: 25", "max_evals: 5")
    exp.write_text(text)
    run = tmp_path / "run"
    assert search(exp, run) == 1
    said = capsys.readouterr().out
    assert "no feasible candidate: none met every bound of fitness.constraints" in said
    assert not _snapshot(run)[1]  # the archive table is empty
    status(run)
    said = capsys.readouterr().out
    assert "constraints: 0 feasible, 5 infeasible of 5 evaluated" in said
    assert "no feasible candidate yet" in said
    with pytest.raises(UserInputError, match="no candidate met every bound"):
        export(run, tmp_path / "w.yaml")
    _check_no_feasible_plot(run)


def _check_no_feasible_plot(run: Path) -> None:
    """Every candidate infeasible: the plot says so and draws no curve, only hollow points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evomerge.report_data import model_rows
    from evomerge.report_plots import draw_fitness
    from evomerge.store import RunStore

    with RunStore.open(run, readonly=True) as st:
        trials = st.trials()
    fig, ax = plt.subplots()
    draw_fitness(ax, trials, model_rows([], {}), {t.idx for t in trials})
    assert [t.get_text() for t in ax.texts] == ["no feasible candidate"]
    assert [ln.get_label() for ln in ax.lines] == ["infeasible candidate (5)"]
    plt.close(fig)


def test_penalised_values_rank_as_debs_rules():
    # feasible by fitness, every feasible above every infeasible, infeasible by violation
    told = [penalised(-5.0, 0.0), penalised(3.0, 0.0), penalised(9.0, 0.5), penalised(9.0, 0.1)]
    assert np.argsort(told).tolist() == [2, 3, 0, 1]
    assert all(v < -1e8 for v in told[2:]) and told[2] == INFEASIBLE_FLOOR - 0.5
    assert math.isnan(penalised(1.0, math.nan))


def test_optuna_is_told_the_constraints_natively():
    from evomerge.drivers.optuna_sampler import OptunaDriver

    cfg = parse_fitness_config(
        {
            "tasks": [{"kind": "python", "function": "f.py:a"}],
            "constraints": [{"task": {"kind": "python", "function": "f.py:b"}, "min": 0.5}],
        }
    )
    cons = Constraints.of(cfg)
    d = OptunaDriver(2, np.zeros(2), np.ones(2), np.full(2, 0.5), seed=0, batch_size=4)
    cands = d.ask(4)
    # the best objective is infeasible (b = 0.1 < 0.5): the study's best must be another
    rows = [{"a": 0.9, "b": 0.1}, {"a": 0.3, "b": 0.6}, {"a": 0.5, "b": 0.7}, {"a": 0.1, "b": 1}]
    d.tell_constraints(cands, [cons.values(r) for r in rows])
    d.tell(cands, [r["a"] for r in rows])
    study = d._study
    assert study.best_trial.number == cands[2].meta["trial"]
    assert study.trials[cands[0].meta["trial"]].constraints == {"0": pytest.approx(0.4)}
    assert d.best[0].index == cands[2].index
    # the constraints survive the driver's state round trip (resume)
    d2 = OptunaDriver(2, np.zeros(2), np.ones(2), np.full(2, 0.5), seed=0, batch_size=4)
    d2.load_state_dict(d.state_dict())
    assert d2._study.best_trial.number == cands[2].meta["trial"]


BAD = [
    ({"task": {"kind": "zoo", "evaluator": "backdoor_safety"}}, "constraints.0", "min"),
    ({"task": {"kind": "zoo", "evaluator": "b"}, "min": 2, "max": 1}, "constraints.0", "max"),
    ({"task": {"kind": "zoo"}, "min": 0.5}, "constraints.0.task.evaluator", "missing"),
    ({"task": {"kind": "zoo", "evaluator": "b"}, "min": "x"}, "constraints.0.min", "number"),
    ({"task": {"kind": "zoo", "evaluator": "b"}, "mn": 0.5}, "constraints.0.mn", "unknown"),
    ({"task": {"kind": "zoo", "evaluator": "lookup"}, "min": 0}, "constraints.0.task", "distinct"),
    (
        {"task": {"kind": "lm_eval", "task": "x", "limit": -1}, "min": 0},
        "constraints.0.task",
        "limit",
    ),
]


@pytest.mark.parametrize(("entry", "where", "hint"), BAD)
def test_config_errors_are_one_line_naming_the_field(entry, where, hint):
    data = {"tasks": [{"kind": "zoo", "evaluator": "lookup"}], "constraints": [entry]}
    with pytest.raises(UserInputError) as err:
        parse_fitness_config(data)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and where in msg and hint in msg, msg


def test_racing_with_constraints_is_refused():
    data = {
        "tasks": [{"kind": "zoo", "evaluator": "lookup"}],
        "constraints": [{"task": {"kind": "zoo", "evaluator": "b"}, "min": 0.5}],
        "racing": {"enabled": True},
    }
    with pytest.raises(UserInputError, match="racing: constraints need every item"):
        parse_fitness_config(data)


def test_unconstrained_config_dumps_as_before():
    cfg = parse_fitness_config({"tasks": [{"kind": "zoo", "evaluator": "lookup"}]})
    assert "constraints" not in cfg.model_dump(mode="json")


def test_store_feasibility_reads_sub_entries():
    cfg = parse_fitness_config(
        {
            "tasks": [{"kind": "zoo", "evaluator": "lookup"}],
            "constraints": [{"task": {"kind": "python", "function": "f.py:s"}, "max": 0.5}],
        }
    )
    cons = Constraints.of(cfg)
    assert cons.violation({"s/x": 0.4, "s/y": 0.8}) == pytest.approx(0.1)
    assert cons.feasible({"s": 0.5}) and math.isnan(cons.violation({}))


def test_the_loop_tells_cma_es_penalised_values_and_optuna_raw_ones():
    from evomerge.drivers.cma_es import CMAES
    from evomerge.drivers.m2n2 import M2N2
    from evomerge.drivers.optuna_sampler import OptunaDriver
    from evomerge.results import EvalResult, JobResult, TaskScore
    from evomerge.told import constraint_values, objective_entries, told_values

    cfg = parse_fitness_config(
        {
            "tasks": [{"kind": "python", "function": "f.py:a"}],
            "constraints": [{"task": {"kind": "python", "function": "f.py:b"}, "min": 0.5}],
        }
    )
    cons = Constraints.of(cfg)

    def job(a: float, b: float) -> JobResult:
        scores = {"a": TaskScore(a), "b": TaskScore(b)}
        return JobResult("d", "OK", a, (a,), EvalResult(tasks=scores))

    results = [job(0.9, 0.1), job(0.3, 0.6), JobResult.failed("d", "boom")]
    box = (2, np.zeros(2), np.ones(2), np.full(2, 0.5))
    cma = CMAES(*box, seed=0, popsize=4)
    told = told_values(cma, results, cons)
    assert told[0] == pytest.approx(INFEASIBLE_FLOOR - 0.4) and told[1] == 0.3
    assert math.isnan(told[2])
    optuna_driver = OptunaDriver(*box, seed=0)
    assert told_values(optuna_driver, results, cons)[:2] == [0.9, 0.3]
    assert constraint_values(results, cons) == [pytest.approx([0.4]), pytest.approx([-0.1]), None]
    # M2N2 ranks by per-example rows: an infeasible child is told as a failure, and the rows
    # it is told hold the objective's entries only
    m2n2 = M2N2(*box, seed=0, archive_size=4, batch_size=2)
    told = told_values(m2n2, results, cons)
    assert math.isnan(told[0]) and told[1] == 0.3 and math.isnan(told[2])
    assert list(objective_entries(results[1].result, cons).tasks) == ["a"]


def test_the_fitness_digest_covers_a_constraints_file(tmp_path):
    from evomerge.fitness.digest import changed, fitness_digests

    (tmp_path / "a.py").write_text("def a(model, tok):\n    return 1.0\n")
    (tmp_path / "b.py").write_text("def b(model, tok):\n    return 1.0\n")
    cfg = parse_fitness_config(
        {
            "tasks": [{"kind": "python", "function": "a.py:a"}],
            "constraints": [{"task": {"kind": "python", "function": "b.py:b"}, "min": 0.5}],
        }
    )
    before = fitness_digests(cfg, tmp_path)
    (tmp_path / "b.py").write_text("def b(model, tok):\n    return 0.0\n")
    assert changed(before, fitness_digests(cfg, tmp_path)) == [f"b: {tmp_path / 'b.py'}"]
