"""A search that cannot start writes nothing: every user error at start (driver, driver
options, fitness file, function or import, a driver that does not fit the space) exits 2 with
one line before the run folder exists; after fixing the YAML the same folder starts cleanly.
Budgets on resume: ``--max-evals`` is the new total, a resume's time counts from its start."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from typer.testing import CliRunner

from evomerge.cli import app
from tests.helpers.search_fixtures import make_family, write_experiment
from tests.test_run_lock import store_bytes

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("models"))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def refused(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


BAD = {
    "unknown driver": (
        "driver: {name: cma_es",
        "driver: {name: cmaes",
        "unknown name 'cmaes'; did you mean 'cma_es'? valid: adamerging, cma_es,",
    ),
    "a device this machine lacks": ("timeout_s: 60", "timeout_s: 60, device: 'cuda:7'", "'cuda:7'"),
    "unknown operator": (
        "merge_method: task_arithmetic",
        "merge_method: task-arithmetic",
        "unknown operator 'task-arithmetic'; did you mean 'task_arithmetic'?",
    ),
    "unknown option": ("{popsize: 5}", "{popsize: 5, sigma: 3}", "driver.options"),
    "missing file": ("score.py:score", "nope.py:score", "nope.py not found"),
    "missing function": ("score.py:score", "score.py:scor", "no function 'scor'"),
    "raising import": ("score.py:score", "boom.py:score", "importing"),
    "driver does not fit": ("driver: {name: cma_es", "driver: {name: frank_wolfe", "fw_pool"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_failed_start_writes_nothing_and_the_fixed_yaml_starts(tmp_path, family, case):
    good = write_experiment(tmp_path, family, max_evals=5, popsize=5)
    (tmp_path / "boom.py").write_text("raise RuntimeError('broken on import')\n")
    old, new, needle = BAD[case]
    text = good.read_text()
    assert old in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(old, new))
    run = tmp_path / "run"
    refused(invoke("search", str(bad), "--run-dir", str(run)), needle)
    assert not run.exists()
    run.mkdir()  # an existing empty folder stays empty too
    refused(invoke("search", str(bad), "--run-dir", str(run)), needle)
    assert list(run.iterdir()) == []
    if case == "unknown driver":  # the fixed YAML starts in the folder the failure left alone
        ok = invoke("search", str(good), "--run-dir", str(run))
        assert ok.exit_code == 0, ok.output
        assert "winner" in ok.output


def test_experts_the_merge_cannot_combine_are_refused_before_the_run(tmp_path, family):
    """An expert with one more token row (a token added, embeddings resized) and no
    tokenizer_source: every candidate used to fail on this, spending the budget on failures."""
    import shutil

    from safetensors.torch import load_file, save_file

    wide = tmp_path / "wide"
    shutil.copytree(family["experts"][1], wide)
    (weights,) = wide.glob("*.safetensors")
    tensors = load_file(weights)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name] = torch.cat([tensors[name], tensors[name][:1]])
    save_file(tensors, weights, metadata={"format": "pt"})
    config = json.loads((wide / "config.json").read_text())
    config["vocab_size"] += 1
    (wide / "config.json").write_text(json.dumps(config))
    good = write_experiment(tmp_path, family, max_evals=5, popsize=5)
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace(family["experts"][1], str(wide)))
    run = tmp_path / "run"
    line = refused(invoke("search", str(bad), "--run-dir", str(run)), "space: ")
    assert f"model {wide}: model.embed_tokens.weight has " in line
    assert "set space.tokenizer_source: base, union or one model's" in line
    assert not run.exists()


def evaluated(run) -> int:
    with sqlite3.connect(f"file:{run / 'store.sqlite'}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]


def test_resume_budgets(tmp_path, family):
    exp = write_experiment(tmp_path, family, max_evals=1000, popsize=5)
    run = tmp_path / "run"
    # A time budget spent by the first run (0.01 s: one generation, then stop) ...
    first = invoke("search", str(exp), "--run-dir", str(run), "--max-seconds", "0.01")
    assert first.exit_code == 0 and "stopped: max_seconds; 5 evaluations" in first.output
    before = store_bytes(run)
    refused(invoke("resume", str(run), "--max-evals", "5"), "--max-evals 5", "more than 5")
    assert store_bytes(run) == before
    # ... does not stop a resume: it gets its own clock, and --max-evals raises the total.
    more = invoke("resume", str(run), "--max-evals", "10", "--max-seconds", "600")
    assert more.exit_code == 0 and "stopped: max_evals; 10 evaluations" in more.output
    cfg = json.loads(
        sqlite3.connect(run / "store.sqlite").execute("SELECT config_json FROM run").fetchone()[0]
    )
    assert cfg["budget"] == {
        "max_evals": 10,
        "max_seconds": 600,
        "max_candidates": None,
        "max_total_seconds": None,
    }
    # The stored per-run clock (0.01 s) applies afresh to a plain resume: one more generation.
    again = invoke("resume", str(run), "--max-evals", "20", "--max-seconds", "0.01")
    assert again.exit_code == 0 and "stopped: max_seconds; 15 evaluations" in again.output
    # A total time cap counts every run: spent already, so nothing more is evaluated.
    capped = invoke("resume", str(run), "--max-evals", "30", "--max-total-seconds", "0.01")
    assert capped.exit_code == 0 and "stopped: max_total_seconds; 15" in capped.output
    assert evaluated(run) == 15
