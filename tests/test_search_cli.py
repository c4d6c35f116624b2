"""status / export / report on a real store (a search on a cheap objective), read-only while
another connection writes; user errors are UserInputError (one line, exit 2 in the CLI)."""

from __future__ import annotations

import pytest

from evomerge.config import load_experiment
from evomerge.errors import UserInputError
from evomerge.recipe import Recipe
from evomerge.search_cli import export, report, status
from evomerge.store import RunStore
from tests.helpers.search_fixtures import write_experiment
from tests.test_loop import _loop


@pytest.fixture()
def run(tmp_path):
    family = {"base": str(tmp_path / "base"), "experts": [str(tmp_path / "a"), str(tmp_path / "b")]}
    cfg = load_experiment(write_experiment(tmp_path, family, max_evals=30, popsize=6))
    run_dir = tmp_path / "run"
    RunStore.create(run_dir, cfg.to_json(), cfg.structural_hash()).close()
    loop, store, _ = _loop(run_dir, 30)
    loop.run()
    return run_dir, store


def test_status_reads_while_the_writer_holds_the_store(run, capsys):
    run_dir, writer = run
    writer.conn.execute("BEGIN IMMEDIATE")  # a search mid-transaction
    try:
        assert status(run_dir) == 0
    finally:
        writer.conn.execute("ROLLBACK")
    text = capsys.readouterr().out
    assert "evaluated 30/30" in text and "#1" in text and "#3" in text


def test_export_ranks(run, tmp_path):
    run_dir, store = run
    archive = store.archive()
    for rank in (1, 2):
        out = tmp_path / f"r{rank}.yaml"
        assert export(run_dir, out, "evomerge", rank) == 0
        recipe = Recipe.load(out)
        assert recipe.digest() == archive[rank - 1].digest
    with pytest.raises(UserInputError, match="--rank 9"):
        export(run_dir, tmp_path / "x.yaml", "evomerge", 9)
    with pytest.raises(UserInputError, match="--format"):
        export(run_dir, tmp_path / "x.yaml", "onnx", 1)


def test_report_writes_plots_and_summary(run, tmp_path):
    run_dir, store = run
    files = report(run_dir, tmp_path / "rep")
    assert files == 0
    names = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert names == ["fitness.png", "genes.png", "report.html", "report.md", "tasks.png"] or (
        names == ["fitness.png", "genes.png", "report.html", "report.md"]
    )
    md = (tmp_path / "rep" / "report.md").read_text()
    best = store.archive()[0]
    n = store.counts()["candidates"]
    assert best.digest[:12] in md and f"candidates: {n} (evaluated 30," in md
    for png in (tmp_path / "rep").glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_report_curves_are_monotone(run):
    from evomerge.report import best_and_median

    _, store = run
    xs, best, med = best_and_median(store.trials())
    assert xs == sorted(xs) and xs[-1] == store.counts()["candidates"]
    finite = [b for b in best if b == b]
    assert finite == sorted(finite)
    assert all(m <= b for m, b in zip(med, best, strict=True) if m == m)


def test_missing_run_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="no run store"):
        status(tmp_path / "nothing")
