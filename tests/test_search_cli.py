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


def test_status_shows_the_batch_asked_ahead_until_it_is_scored(tmp_path, capsys):
    """A real search (random, asks ahead) stopped after its first generation: the store's
    ``pending`` table holds the next batch, and status says so on one line; in a store of the
    old loop (the batch in the driver state) too; once resumed to the end, no such line."""
    import threading

    from tests.helpers.loop_golden import run as golden_run
    from tests.test_loop_golden import _to_legacy

    family = {"base": str(tmp_path / "base"), "experts": [str(tmp_path / "a"), str(tmp_path / "b")]}
    cfg = load_experiment(write_experiment(tmp_path, family, max_evals=14, popsize=4))
    run_dir = tmp_path / "run"
    RunStore.create(run_dir, cfg.to_json(), cfg.structural_hash()).close()
    stop = threading.Event()
    golden_run("random", run_dir, stop_event=stop, on_generation=lambda _: stop.set())
    with RunStore.open(run_dir, readonly=True) as st:
        asked = [p.idx for p in st.pending()]
        scored = st.counts()["candidates"]
    assert asked == list(range(scored, scored + 4))  # random's batch_size 4, after those scored

    want = f"in flight 4 candidate(s) asked ahead, not yet scored (#{asked[0]}-#{asked[-1]};"
    for store_kind in ("pending table", "legacy driver state"):
        if store_kind.startswith("legacy"):
            _to_legacy(run_dir)
        assert status(run_dir) == 0
        lines = [ln for ln in capsys.readouterr().out.splitlines() if "in flight" in ln]
        assert len(lines) == 1 and lines[0].startswith(want), (store_kind, lines)

    golden_run("random", run_dir)  # resumed: scores the batch, then the rest of the budget
    assert status(run_dir) == 0
    assert "in flight" not in capsys.readouterr().out
