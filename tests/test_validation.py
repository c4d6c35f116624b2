"""The validation split: the archive re-scored on items the search never saw, the winner chosen
there. Real searches over a tiny Llama family (python fitness), real SQLite, a real SIGKILL;
the zoo and lm-eval splits on lm-skills' real task files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evomerge.config import load_experiment
from evomerge.errors import UserInputError
from evomerge.fitness import build_fitness, parse_fitness_config
from evomerge.recipe import Recipe
from evomerge.search_cli import export, resume, search, status
from evomerge.session import open_search
from evomerge.store import RunStore
from evomerge.validation import ranking, stored
from evomerge.validation_baselines import baseline_scores
from tests.helpers.search_fixtures import make_family, write_experiment

pytestmark = pytest.mark.timeout(600)

# The held-out score ranks the archive in reverse of the search's own score, so the
# validation-best is the search's worst member: a search that picked on its own items picks
# wrong. Each finished call appends a line, so the test counts how often a model was scored.
HELDOUT_PY = """
import os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # (Ray workers too) score.py beside this file
from score import score

LOG = Path(__file__).with_name("heldout_calls.log")


def heldout(model, tokenizer):
    value = -score(model, tokenizer)
    time.sleep(float(os.environ.get("HELDOUT_SLEEP", "0")))
    with LOG.open("a") as f:
        f.write(f"{value!r} {os.getpid()}\\n")
    return value
"""

# The search's fitness, noting the process that scored each candidate.
SCORE_PID_PY = """
import os, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from score import score as _score


def score(model, tokenizer):
    with Path(__file__).with_name("search_pids.log").open("a") as f:
        f.write(f"{os.getpid()}\\n")
    return _score(model, tokenizer)
"""


def _experiment(tmp, family, *, max_evals=10, validation=True, ta_baseline=False, threads=None):
    path = write_experiment(tmp, family, max_evals=max_evals, popsize=5, ta_baseline=ta_baseline)
    if threads is not None:  # evaluation.threads: what Ray workers use (1: serial's arithmetic)
        text = path.read_text().replace("timeout_s: 60}", f"timeout_s: 60, threads: {threads}}}")
        path.write_text(text)
    (tmp / "heldout.py").write_text(HELDOUT_PY)
    if validation:
        text = path.read_text().replace(
            "fitness: {python: score.py:score}",
            "fitness:\n  tasks: [{kind: python, name: score, function: score.py:score,"
            " validation_function: heldout.py:heldout}]\n  validation: {}",
        )
        path.write_text(text)
    return path


def _experts(run) -> dict:
    """label -> (search fitness, validation score) of the run's experts and base."""
    with RunStore.open(run, readonly=True) as st:
        return baseline_scores(st)


def _calls(tmp) -> int:
    log = tmp / "heldout_calls.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("models"))


def test_winner_is_the_best_on_validation(family, tmp_path, capsys):
    exp = _experiment(tmp_path, family, ta_baseline=True)
    run = tmp_path / "run"
    assert search(exp, run) == 0
    printed = capsys.readouterr().out
    with RunStore.open(run, readonly=True) as st:
        archive, val = st.archive(), stored(st)
        ranked = ranking(st, True)
    assert len(archive) == 2 and set(val) == {e.digest for e in archive}  # every member scored
    assert _calls(tmp_path) == 2 + 4  # the archive, then the experts, the base, task arithmetic
    assert ranked.by == "validation score"
    # heldout = -score: the validation winner is the search's rank-2 member
    assert ranked.members[0].digest == archive[1].digest != archive[0].digest
    assert val[archive[1].digest]["fitness"] == pytest.approx(-archive[1].fitness)
    assert f"winner {archive[1].digest[:12]}" in printed
    assert "winner by validation score" in printed and "gap" in printed
    # the experts and the base on the same held-out items (heldout = -score), beside the winner
    experts = _experts(run)
    assert list(experts)[:3] == ["expert expert0", "expert expert1", "base"]
    assert len(experts) == 4 and list(experts)[3].startswith("task arithmetic λ=")
    for label, (fit, held_out) in experts.items():
        assert held_out == pytest.approx(-fit)
        assert f"{label:<31} validation {held_out:.4f}  search {fit:.4f}" in printed
    winner = ranked.members[0].validation
    best = max(experts.items(), key=lambda kv: kv[1][1])
    above = f"note: {best[0]} scores {best[1][1]:.4f} on the validation items, above the winner"
    assert (above in printed) == (best[1][1] > winner)

    assert export(run, tmp_path / "w.yaml") == 0  # no --rank: the validation winner
    assert Recipe.load(tmp_path / "w.yaml").digest() == archive[1].digest
    assert export(run, tmp_path / "r2.yaml", rank=2) == 0
    assert Recipe.load(tmp_path / "r2.yaml").digest() == archive[0].digest
    assert "winner by validation score" in capsys.readouterr().out
    # eval's rank 1 is export's: the validation winner, scored on the items it was chosen on
    from evomerge.commands.evaluate import evaluate

    assert evaluate(run, exp, as_json=True, split="validation") == 0
    got = json.loads(capsys.readouterr().out)
    assert got["digest"] == archive[1].digest
    assert got["fitness"] == pytest.approx(val[archive[1].digest]["fitness"])

    assert status(run) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, ln in enumerate(lines) if "#1" in ln)
    assert "ranked by validation score" in lines[first - 1]
    assert archive[1].digest[:12] in lines[first] and "gap" in lines[first]
    shown = next(ln for ln in lines if ln.startswith("baselines: "))
    fit, held_out = experts["base"]
    assert f"base {fit:.4f} (validation {held_out:.4f})" in shown

    from evomerge.report import write_report

    write_report(run, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "winner by validation score" in md and "| validation | gap |" in md
    fit, held_out = experts["expert expert0"]
    assert f"| expert expert0 | {fit:.4f} | {held_out:.4f} | {fit - held_out:+.4f} |" in md

    # a finished run resumed: nothing is scored again (the one eval above aside)
    assert resume(run) == 0
    assert _calls(tmp_path) == 2 + 4 + 1


def test_killed_while_validating_resumes_without_rescoring(family, tmp_path):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    exp_ref = _experiment(ref_dir, family)
    open_search(load_experiment(exp_ref), ref_dir / "run").run()
    with RunStore.open(ref_dir / "run", readonly=True) as st:
        expected = stored(st)

    work = tmp_path / "work"
    work.mkdir()
    exp = _experiment(work, family)
    run = work / "run"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HELDOUT_SLEEP": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "evomerge.cli", "search", str(exp), "--run-dir", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # the store may be half created: tables come in the first transaction
            with RunStore.open(run, readonly=True) as st:
                done = len(stored(st))
        except (UserInputError, sqlite3.OperationalError):
            done = 0
        if done == 1:  # one member validated and stored, the other in flight
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done == 1, "the search ended before the kill"
    with RunStore.open(run, readonly=True) as st:
        at_kill = len(stored(st))
    calls_at_kill = _calls(work)

    assert resume(run) == 0
    with RunStore.open(run, readonly=True) as st:
        got = stored(st)
    assert got == expected  # same archive, same validation scores as the uninterrupted run
    assert _calls(work) == calls_at_kill + (2 - at_kill) + 3  # stored members not scored again
    experts = _experts(run)  # scored once, after the archive (heldout = -score)
    assert len(experts) == 3 and all(v == pytest.approx(-f) for f, v in experts.values())


def test_without_validation_nothing_changes(family, tmp_path, capsys):
    exp = _experiment(tmp_path, family, validation=False)
    cfg = load_experiment(exp)
    dumped = json.loads(cfg.to_json())["fitness"]
    assert "validation" not in dumped and "validation_function" not in str(dumped)
    run = tmp_path / "run"
    assert search(exp, run) == 0
    printed = capsys.readouterr().out
    assert "winner by" not in printed
    with RunStore.open(run, readonly=True) as st:
        assert st.get_meta("validation") is None and ranking(st, False).by == "search fitness"
        assert st.get_meta("validation_baselines") is None
        best, top = st.archive()[0].digest, st.archive()[0].fitness
    # a baseline above the winner is said, on the items both were scored on: the search's
    label, (fit, _) = max(_experts(run).items(), key=lambda kv: kv[1][0])
    above = f"note: {label} scores {fit:.4f} on the search's items, above the winner's {top:.4f}"
    assert (above in printed) == (fit > top)
    assert export(run, tmp_path / "w.yaml") == 0
    assert Recipe.load(tmp_path / "w.yaml").digest() == best
    capsys.readouterr()
    assert status(run) == 0
    text = capsys.readouterr().out  # (the tmp path itself holds the word validation)
    assert "ranked by" not in text and "gap" not in text and "pending" not in text


@pytest.mark.parametrize(
    ("task", "match"),
    [
        ({"kind": "zoo", "evaluator": "skills"}, r"tasks\.0\.options\.limit"),
        ({"kind": "python", "function": "f.py:g"}, r"tasks\.0\.validation_function"),
        ({"kind": "lm_eval", "task": "zoo_cipher"}, r"tasks\.0: the search scores every doc"),
        ({"kind": "perplexity", "text_file": "t.txt"}, r"tasks\.0\.max_windows"),
        (
            {"kind": "python", "function": "f.py:g", "validation_function": "f.py:g"},
            "search's own function",
        ),
    ],
)
def test_a_split_without_items_left_is_refused(task, match):
    with pytest.raises(UserInputError, match=match):
        parse_fitness_config({"tasks": [task], "validation": {"items": 5}})


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (", validation_function: heldout.py:heldout", "tasks.0.validation_function"),
        ("heldout.py:heldout", "has no function 'nope'"),  # found only when built
    ],
)
def test_refused_before_the_run_folder_exists(family, tmp_path, edit, match):
    exp = _experiment(tmp_path, family)
    new = "" if edit.startswith(",") else "heldout.py:nope"
    exp.write_text(exp.read_text().replace(edit, new))
    with pytest.raises(UserInputError, match=match):
        search(exp, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_zoo_validation_items_follow_the_search_items():
    cfg = parse_fitness_config(
        {
            "tasks": [
                {"kind": "zoo", "evaluator": "skills", "options": {"offset": 10, "limit": 50}}
            ],
            "validation": {"items": 30},
        }
    )
    assert build_fitness(cfg).runners[0].options == {"offset": 10, "limit": 50}
    assert build_fitness(cfg, split="validation").runners[0].options == {"offset": 60, "limit": 30}
    far = parse_fitness_config(
        {
            "tasks": [{"kind": "zoo", "evaluator": "skills", "options": {"limit": 200}}],
            "validation": {},
        }
    )
    with pytest.raises(UserInputError, match="no items after its search items"):
        build_fitness(far, split="validation")
    digits = parse_fitness_config(
        {
            "tasks": [{"kind": "zoo", "evaluator": "digits", "options": {"limit": 5}}],
            "validation": {},
        }
    )
    with pytest.raises(UserInputError, match="no items to hold out"):
        build_fitness(digits, split="validation")


@pytest.mark.parametrize("pick", [{"subsample": 40}, {"limit": 40, "offset": 5}])
def test_lm_eval_validation_docs_are_disjoint_and_seeded(pick):
    pytest.importorskip("lm_eval")
    from pathlib import Path

    folder = str(Path(__file__).resolve().parents[1] / "fitness" / "zoo_cipher")
    task = {"kind": "lm_eval", "task": "zoo_cipher", "include_path": folder, **pick}
    cfg = parse_fitness_config({"tasks": [task], "validation": {"items": 25}})
    search_ids = build_fitness(cfg).runners[0].sample_ids["zoo_cipher"]
    val_ids = build_fitness(cfg, split="validation").runners[0].sample_ids["zoo_cipher"]
    again = build_fitness(cfg, split="validation").runners[0].sample_ids["zoo_cipher"]
    assert len(search_ids) == 40 and len(val_ids) == 25 and val_ids == again
    assert not set(search_ids) & set(val_ids)
    assert min(val_ids) >= pick.get("offset", 0)
    if "limit" in pick:  # the docs right after the search window, as lm-eval's limit reads
        assert val_ids == list(range(45, 70))


def _pids(path: Path) -> set[int]:
    return {int(line.split()[-1]) for line in path.read_text().splitlines()}


def test_validation_through_ray_equals_serial(family, tmp_path):
    """The re-scoring goes through the Ray evaluator too (2 workers on loopback) and gives the
    serial run's validation scores. The search's own worker processes score it: their models
    stay loaded (no second cluster, no second load of every model)."""
    pytest.importorskip("ray")
    serial, ray_dir = tmp_path / "serial", tmp_path / "ray"
    for d in (serial, ray_dir):
        d.mkdir()
        exp = _experiment(d, family, threads=1)
        exp.write_text(exp.read_text().replace("score.py:score", "score_pid.py:score"))
        (d / "score_pid.py").write_text(SCORE_PID_PY)
    assert search(serial / "exp.yaml", serial / "run", workers=1) == 0
    assert search(ray_dir / "exp.yaml", ray_dir / "run", workers=2) == 0
    got = []
    for d in (serial, ray_dir):
        with RunStore.open(d / "run", readonly=True) as st:
            got.append({k: v["fitness"] for k, v in stored(st).items()})
    assert got[0].keys() == got[1].keys() and len(got[0]) == 2
    for k, v in got[0].items():
        assert got[1][k] == pytest.approx(v, rel=1e-6)
    assert _calls(ray_dir) == 2 + 3  # the archive, then the experts and the base
    experts = [_experts(d / "run") for d in (serial, ray_dir)]
    assert experts[0].keys() == experts[1].keys() and len(experts[0]) == 3
    for k, (_, v) in experts[0].items():
        assert experts[1][k][1] == pytest.approx(v, rel=1e-6)
    searched = _pids(ray_dir / "search_pids.log")
    assert len(searched) == 2 and os.getpid() not in searched  # two Ray workers
    assert _pids(ray_dir / "heldout_calls.log") <= searched


def test_ray_workers_switch_to_validation_and_drop_what_was_in_flight(family, tmp_path):
    """``use_split``: the jobs submitted before the switch are never reported; the switched
    workers score a recipe on the validation items as a serial validation evaluator does."""
    pytest.importorskip("ray")
    from evomerge.build import build_evaluator
    from evomerge.recipe import ModelRef

    cfg = load_experiment(_experiment(tmp_path, family, threads=1))
    models = [ModelRef(model=m, parameters={"weight": 0.5}) for m in family["experts"]]
    recipe = Recipe(merge_method="task_arithmetic", models=models, base_model=family["base"])
    with build_evaluator(cfg, tmp_path / "run", "validation") as serial:
        want = serial.evaluate([recipe])[0]
    cfg = cfg.model_copy(update={"workers": 2})
    with build_evaluator(cfg, tmp_path / "run") as ev:
        searched = ev.evaluate([recipe])[0]
        for _ in range(3):  # one running on each worker, one queued
            ev.submit(recipe)
        assert ev.use_split("validation") and ev.in_flight == 0
        got = ev.evaluate([recipe])[0]
        assert ev.poll(timeout=5) == []
    assert want.ok and got.ok and searched.ok
    assert got.fitness == pytest.approx(want.fitness, rel=1e-6)
    assert got.fitness == pytest.approx(-searched.fitness, rel=1e-6)  # heldout = -score


def test_interrupted_run_says_validation_is_pending_until_resumed(family, tmp_path, capsys):
    import threading

    exp = _experiment(tmp_path, family)
    stop = threading.Event()
    s = open_search(load_experiment(exp), tmp_path / "run", stop_event=stop)
    s.loop.on_generation = lambda p: stop.set()  # Ctrl-C after the first generation
    assert s.run().stop_reason == "interrupted"
    run = tmp_path / "run"
    with RunStore.open(run, readonly=True) as st:
        assert stored(st) == {} and len(st.archive()) == 2
        best = st.archive()[0].digest
    capsys.readouterr()
    assert export(run, tmp_path / "w.yaml") == 0  # the search order until validation is done
    assert Recipe.load(tmp_path / "w.yaml").digest() == best
    assert "2 archived model(s) not validated yet" in capsys.readouterr().out
    assert status(run) == 0
    assert "ranked by search fitness" in capsys.readouterr().out
    assert resume(run) == 0
    with RunStore.open(run, readonly=True) as st:
        assert set(stored(st)) == {e.digest for e in st.archive()}
        assert ranking(st, True).by == "validation score"


def test_perplexity_validation_windows_follow_the_search_windows(tmp_path):
    from tests.test_fitness_lm_eval import tiny_model, tiny_tokenizer

    model, tok = tiny_model(), tiny_tokenizer()
    f = tmp_path / "text.txt"
    f.write_text("1+2=3\n4+5=9\nabc def ghij\n" * 6)
    task = {"kind": "perplexity", "text_file": str(f), "max_length": 8}
    every = build_fitness(parse_fitness_config({"tasks": [task]}))(model, tok)
    cfg = parse_fitness_config({"tasks": [{**task, "max_windows": 3}], "validation": {"items": 2}})
    search_ = build_fitness(cfg)(model, tok).tasks["perplexity"].per_example
    val = build_fitness(cfg, split="validation")(model, tok).tasks["perplexity"].per_example
    assert search_ == every.tasks["perplexity"].per_example[:3]
    assert val == every.tasks["perplexity"].per_example[3:5]


def test_validation_can_score_another_metric_than_the_search():
    """A search ranked on the gold answer's log-likelihood, its winner chosen on exact match:
    the zoo's validation_score and lm-eval's validation_task swap the metric on the
    validation items only; without fitness.validation they are refused; unset, the stored
    config (and a run's hash) is what it was."""
    pytest.importorskip("lm_eval")
    from pathlib import Path

    zoo = {"kind": "zoo", "evaluator": "skills", "options": {"limit": 50, "score": "gold_loglik"}}
    cfg = parse_fitness_config(
        {"tasks": [{**zoo, "validation_score": "exact_match"}], "validation": {"items": 30}}
    )
    assert build_fitness(cfg).runners[0].options["score"] == "gold_loglik"
    assert build_fitness(cfg, split="validation").runners[0].options == {
        "limit": 30,
        "score": "exact_match",
        "offset": 50,
    }
    assert "validation_score" not in parse_fitness_config({"tasks": [zoo]}).model_dump()["tasks"][0]
    folder = str(Path(__file__).resolve().parents[1] / "fitness" / "real_target")
    twin = {"kind": "lm_eval", "task": "real_target_gold_loglik", "include_path": folder}
    twin |= {"limit": 40, "validation_task": "real_target"}
    cfg = parse_fitness_config({"tasks": [twin], "validation": {"items": 40}})
    assert build_fitness(cfg).runners[0].window() == {"real_target_gold_loglik": list(range(40))}
    assert build_fitness(cfg, split="validation").runners[0].sample_ids == {
        "real_target": list(range(40, 80))
    }
    with pytest.raises(UserInputError) as err:
        parse_fitness_config({"tasks": [twin]})
    assert str(err.value).endswith(
        "tasks.0.validation_task: there is no fitness.validation to use it; set "
        "fitness.validation or remove validation_task"
    )


def test_a_search_on_loglik_is_validated_on_exact_match(tmp_path, capsys):
    """End to end on lm-skills: search fitness in log-likelihoods (negative), validation in
    exact match (in [0, 1]), the winner chosen on the latter, and no gap between the two."""
    models = "".join(f"\n  - zoo:lm-skills/{e}" for e in ("cipher", "shift", "sort", "reverse"))
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        f"""\
name: loglik_then_exact
models:{models}
base_model: zoo:lm-skills/base
space: {{preset: ps_dare_ties, layer_groups: 1, x0: {{weight: 0.25}}}}
fitness:
  tasks:
    - kind: zoo
      evaluator: skills
      options: {{limit: 5, score: gold_loglik}}
      validation_score: exact_match
  validation: {{items: 10}}
driver: {{name: random, options: {{batch_size: 4}}}}
budget: {{max_evals: 4}}
seed: 1
archive: {{top_k: 2}}
"""
    )
    search(exp, tmp_path / "run")
    with RunStore.open(tmp_path / "run", readonly=True) as st:
        assert all(t.fitness < 0 for t in st.trials())
        ranked = ranking(st)
        done = stored(st)
    assert ranked.by == "validation score" and len(ranked.members) == 2
    assert all(0.0 <= m.validation <= 1.0 and not m.comparable for m in ranked.members)
    assert ranked.members[0].validation >= ranked.members[1].validation
    assert all(v["error"] is None for v in done.values())
    capsys.readouterr()
    status(tmp_path / "run")
    out = capsys.readouterr().out
    assert "(another metric: no gap)" in out and "gap +" not in out and "gap -" not in out
    from evomerge.report import write_report

    write_report(tmp_path / "run", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "(another metric: no gap)" in md and "gap = search - validation" not in md


def test_the_note_compares_on_the_winners_items_and_not_under_constraints():
    from evomerge.validation import BY_SEARCH, BY_VALIDATION, Member, Ranking
    from evomerge.validation_baselines import winner_note

    won = Member("d" * 64, 5, fitness=0.60, validated=True, validation=0.50)
    experts = {"expert a": (0.55, 0.52), "base": (0.65, 0.40)}
    on_val = Ranking([won], BY_VALIDATION, enabled=True, pending=0)
    assert winner_note(on_val, experts) == (
        "note: expert a scores 0.5200 on the validation items, above the winner's 0.5000: "
        "no merge this search kept beats it"
    )
    on_search = Ranking([won], BY_SEARCH, enabled=False, pending=0)
    assert winner_note(on_search, experts).startswith("note: base scores 0.6500 on the search's")
    assert winner_note(on_val, experts, constrained=True) is None  # baselines may break a bound
    assert winner_note(on_val, {"base": (0.65, 0.45)}) is None  # the winner is ahead there
