"""Failures as a user sees them, through the `evomerge` command on real lm-skills zoo searches:
a fitness that raises, returns 'abc', None or NaN prints each reason once as it happens, status
and the report group failures by reason and say why the search stopped, a fitness that fails on
every baseline stops the search before any candidate (and resume re-scores them once fixed), and
the report's HTML renders in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evomerge.store import RunStore

# Baselines (2 experts + base) are the first 3 calls; then each way to fail, then a score, twice.
FLAKY = """
import itertools
_calls = itertools.count()

def score(model, tokenizer):
    n = next(_calls)
    if n < 3:
        return 0.1 * n
    kind = (n - 3) % 5
    if kind == 0:
        raise RuntimeError("my metric broke")
    return ["abc", None, float("nan"), 0.5][kind - 1]

def broken(model, tokenizer):
    raise KeyError("labels")

def only_baselines(model, tokenizer):
    if next(_calls) < 3:
        return 0.25
    raise ValueError("no merge can be scored")
"""

EXPERIMENT = """
name: {name}
models: [zoo:lm-skills/cipher, zoo:lm-skills/shift]
base_model: zoo:lm-skills/base
space: {{preset: ps_dare_ties, layer_groups: 2}}
fitness:
  tasks:
    - {{kind: zoo, name: skills, evaluator: skills, options: {{limit: 4}}}}
    - {{kind: python, name: mine, function: fit.py:{fn}}}
driver: {{name: cma_es, options: {{popsize: 5}}}}
budget: {{max_evals: 10}}
seed: 0
baselines: {{task_arithmetic: []}}  # the fitness counts its calls: the first 3 are the baselines
"""

REASONS = [
    "RuntimeError: my metric broke",
    "python fitness 'fit.py:score' returned str 'abc'; it must return a finite float",
    "python fitness 'fit.py:score' returned None",
    "python fitness 'fit.py:score' returned nan; it must return a finite float",
]


def evomerge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "evomerge.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def _search(tmp: Path, name: str, fn: str) -> tuple[Path, subprocess.CompletedProcess]:
    (tmp / "fit.py").write_text(FLAKY)
    (tmp / f"{name}.yaml").write_text(EXPERIMENT.format(name=name, fn=fn))
    return tmp / name, evomerge("search", f"{name}.yaml", "--run-dir", name, cwd=tmp)


def _report(tmp: Path, run_dir: Path) -> Path:
    """The report as the search left it (the resume test later changes the broken run)."""
    res = evomerge("report", str(run_dir), "--out", str(tmp / "rep"), cwd=tmp)
    assert res.returncode == 0, res.stderr
    return tmp / "rep"


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flaky")
    run_dir, res = _search(tmp, "flaky", "score")
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, run_dir, res, _report(tmp, run_dir)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("broken")
    run_dir, res = _search(tmp, "broken", "broken")
    return tmp, run_dir, res, _report(tmp, run_dir)


@pytest.fixture(scope="module")
def allfail(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("allfail")
    run_dir, res = _search(tmp, "allfail", "only_baselines")
    return tmp, run_dir, res, _report(tmp, run_dir)


def test_search_prints_each_failure_reason_once_as_it_happens(flaky):
    res = flaky[2]
    lines = res.stderr.splitlines()
    for reason in REASONS:  # each happened twice, printed once, with the candidate's id
        hits = [line for line in lines if reason in line]
        assert len(hits) == 1, (reason, res.stderr)
        assert re.match(r"candidate \d+ \([0-9a-f]{12}\) failed: ", hits[0]), hits[0]
    assert "10 evaluations, 8 failed" in res.stdout


def test_status_groups_failures_and_says_why_it_stopped(flaky):
    tmp, run_dir = flaky[:2]
    res = evomerge("status", str(run_dir), cwd=tmp)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "stop: budget.max_evals reached: 10 evaluations, 8 failed" in text
    assert "failures by reason (8):" in text
    for reason in REASONS:
        assert re.search(r"2× first candidate \d+ \([0-9a-f]{12}\): " + re.escape(reason), text)
    assert re.search(r"baselines: expert cipher \d\.\d{4}, expert shift \d\.\d{4}, base \d", text)


def test_every_baseline_failing_stops_before_the_budget_then_resume_searches(broken):
    tmp, run_dir, res, _ = broken
    assert res.returncode == 2
    error = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "every baseline (expert cipher, expert shift, base)" in error[0]
    assert "KeyError: 'labels'" in error[0] and f"evomerge resume {run_dir.name}" in error[0]
    with RunStore.open(run_dir, readonly=True) as st:
        assert st.counts()["candidates"] == 0  # no budget spent
        assert json.loads(st.get_meta("stop"))["reason"] == "baselines_failed"
    status = evomerge("status", str(run_dir), cwd=tmp).stdout
    assert "every expert and the base failed the fitness" in status
    assert "3× first expert cipher: KeyError: 'labels'" in status
    # The user fixes the function; resume scores the baselines again and searches.
    fit = tmp / "fit.py"
    fit.write_text(fit.read_text().replace('raise KeyError("labels")', "return 0.25"))
    res = evomerge("resume", str(run_dir), cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"expert cipher: fitness \d\.\d{4}", res.stderr) and "winner" in res.stdout
    with RunStore.open(run_dir, readonly=True) as st:
        assert st.counts()["evaluated"] == 10
        assert json.loads(st.get_meta("stop"))["reason"] == "max_evals"


def _tables(md: str) -> list[list[str]]:
    return [b.splitlines() for b in md.split("\n\n") if b.startswith("|")]


def _cells(line: str) -> int:
    return len(re.split(r"(?<!\\)\|", line.strip())) - 2


def _check_tables(md: str) -> dict[str, str]:
    """Every table row has the header's number of cells; the per-task rows by model name."""
    for table in _tables(md):
        assert {_cells(line) for line in table} == {_cells(table[0])}, table
    return {line.split("|")[1].strip(): line for line in _tables(md)[0][2:]}


def test_report_of_a_run_with_failures(flaky):
    md = (flaky[3] / "report.md").read_text()
    assert "- stopped: budget.max_evals reached: 10 evaluations, 8 failed" in md
    rows = _check_tables(md)
    assert {"expert cipher", "expert shift", "base"} <= set(rows)
    assert any(k.startswith("#1 merge `") for k in rows)
    assert "## Failures by reason (8)" in md
    for reason in REASONS:
        assert reason in md
    pngs = {p.name for p in flaky[3].glob("*.png")}
    assert pngs == {"fitness.png", "tasks.png", "genes.png"}


def test_report_of_a_run_whose_baselines_all_failed(broken):
    md = (broken[3] / "report.md").read_text()
    assert "- stopped: every expert and the base failed the fitness" in md
    assert "`KeyError: 'labels'" in md
    rows = _check_tables(md)
    assert all(rows[m].split("|")[2].strip() == "FAIL" for m in ("expert cipher", "base"))
    assert "0.0000" not in md  # a failure is never shown as a score
    assert "| 3 | expert cipher | `KeyError: 'labels'" in md
    assert not list(broken[3].glob("*.png"))  # nothing to plot: no trial, no score


def test_a_run_whose_candidates_all_fail_stops_early_then_resumes(tmp_path):
    """Baselines fine, every merge failing: the search stops after its first 8 evaluations
    (two generations of 5) instead of failing its whole budget, says why in one line, and
    resume, after the fix, continues the same run."""
    (tmp_path / "fit.py").write_text(FLAKY)
    exp = EXPERIMENT.format(name="stops", fn="only_baselines").replace(
        "max_evals: 10", "max_evals: 40"
    )
    (tmp_path / "stops.yaml").write_text(exp)
    res = evomerge("search", "stops.yaml", "--run-dir", "stops", cwd=tmp_path)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "stopped: all_failed; 10 evaluations, 10 failed" in res.stdout
    assert "stopped early: every candidate of this run failed" in res.stdout
    assert "`evomerge resume stops` continues" in res.stdout
    status = evomerge("status", "stops", cwd=tmp_path).stdout
    assert "stop: every candidate of this search (or resume) failed, so it stopped early" in status
    (tmp_path / "fit.py").write_text("def only_baselines(model, tokenizer):\n    return 0.5\n")
    res = evomerge("resume", "stops", "--allow-changed-fitness", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stopped: max_evals; 40 evaluations, 10 failed" in res.stdout


def test_a_run_where_every_candidate_failed(allfail):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evomerge.report_data import model_rows, task_names
    from evomerge.report_plots import draw_fitness, draw_tasks

    tmp, run_dir, res, rep = allfail
    assert res.returncode == 1
    assert (
        f"no candidate succeeded; failures by reason: evomerge status {run_dir.name}" in res.stdout
    )
    md = (rep / "report.md").read_text()
    assert "- best fitness: none, no candidate succeeded" in md
    rows = _check_tables(md)
    assert set(rows) == {"expert cipher", "expert shift", "base"}  # no merge row of zeros
    assert "| 10 | candidate 0 (" in md and "ValueError: no merge can be scored" in md
    with RunStore.open(run_dir, readonly=True) as st:
        trials, baselines = st.trials(), json.loads(st.get_meta("baselines"))
    fig, (a, b) = plt.subplots(1, 2)
    draw_fitness(a, trials, model_rows([], baselines))
    assert [t.get_text() for t in a.texts] == ["no candidate succeeded"]
    assert not [ln for ln in a.lines if ln.get_transform() is a.transData]  # no fitness values
    fails = [ln for ln in a.lines if ln.get_label() == "failed candidate (10)"]
    assert list(fails[0].get_xdata()) == list(range(1, 11))  # marks on the x axis
    rows = model_rows([], baselines)
    draw_tasks(b, rows, task_names(rows))
    labels = [t.get_text() for t in b.get_legend().get_texts()]
    assert sorted(labels) == ["base", "expert cipher", "expert shift", "no merge succeeded"]
    assert b.get_title() and b.get_xlabel() == "task" and a.get_title() and a.get_xlabel()
    plt.close(fig)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


PROBE = """<script>addEventListener('load', () => {
  document.body.dataset.imgs = [...document.images].map(i => i.naturalWidth).join(',');
});</script>"""


@pytest.mark.skipif(
    _chromium() is None, reason="chromium not installed (scripts/ci_deps.sh installs it as root)"
)
def test_report_html_renders_in_a_headless_browser(flaky):
    page = flaky[3] / "probe.html"
    page.write_text((flaky[3] / "report.html").read_text() + PROBE)
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu"]
    cmd += ["--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    widths = re.search(r'data-imgs="([^"]*)"', dom).group(1).split(",")
    assert len(widths) == 3 and all(int(w) > 100 for w in widths)  # every plot decoded
    assert "<li>" not in dom.replace("<ul><li>", "").replace("</li><li>", "")
    assert "<thead><tr><th>model</th><th>fitness</th>" in dom
    assert "<th>count</th><th>first failed</th><th>reason</th>" in dom
    text = re.sub(r"<[^>]+>", "", dom.split("<body", 1)[1])
    assert "`" not in text.replace("'return'", "")  # code spans became <code>, no backticks
    assert "stopped: budget.max_evals reached" in text


def test_reasons_differ_only_in_numbers_group_together():
    from evomerge.failures import FailureLog, group_failures

    fails = [
        ("candidate 3", "took 12.5 s > timeout 10 s"),
        ("candidate 4", "fitness is not finite: task 'a' scored nan (task scores {'a': nan})"),
        ("candidate 7", "took 11.0 s > timeout 10 s"),
        ("candidate 9", "ValueError: shape\n  (3, 4) is wrong"),
    ]
    groups = group_failures(fails)
    assert [(g.count, g.first) for g in groups] == [
        (2, "candidate 3"),
        (1, "candidate 4"),
        (1, "candidate 9"),
    ]
    assert groups[0].reason == "took 12.5 s > timeout 10 s"  # the first one, verbatim
    assert groups[2].reason == "ValueError: shape (3, 4) is wrong"  # one line
    printed: list[str] = []
    log = FailureLog(printed.append)
    for who, error in fails:
        log.note(who, error)
    assert printed[0] == "candidate 3 failed: took 12.5 s > timeout 10 s" and len(printed) == 3
