"""What a resume checks before writing: a refused resume after a SIGKILL leaves the store's
bytes (its -wal file included) as they were; editing the fitness file is refused unless the
user passes --allow-changed-fitness, which the store records."""

from __future__ import annotations

import json
import sqlite3

import pytest

from evomerge.fitness.config import parse_fitness_config
from evomerge.fitness.digest import fitness_digests
from tests.helpers.search_fixtures import make_family, write_experiment
from tests.test_run_lock import evaluated, start_writer, store_bytes
from tests.test_search_start import invoke, refused

pytestmark = pytest.mark.timeout(300)


def test_refused_resumes_write_nothing_and_fitness_changes_are_recorded(tmp_path):
    family = make_family(tmp_path / "models")
    exp = write_experiment(tmp_path, family, max_evals=100000, popsize=5)
    run = tmp_path / "run"
    search = start_writer(["search", str(exp), "--run-dir", str(run)], run)
    search.kill()
    search.wait()
    before = store_bytes(run)
    assert "store.sqlite-wal" in before  # a killed writer leaves its WAL unfolded

    changed = write_experiment(tmp_path, family, max_evals=100000, popsize=5, seed=7, name="c.yaml")
    # In process from here on (the CLI's own code path, without a torch import per command).
    refused(invoke("resume", str(run), "--config", str(changed)), "structural config")
    assert store_bytes(run) == before

    score = tmp_path / "score.py"
    score.write_text(score.read_text().replace("logp.mean()", "logp.mean() * 2"))
    n = evaluated(run)
    res = invoke("resume", str(run), "--max-evals", str(n + 5))
    refused(res, "fitness code changed", str(score), "--allow-changed-fitness")
    assert store_bytes(run) == before

    ok = invoke("resume", str(run), "--max-evals", str(n + 5), "--allow-changed-fitness")
    assert ok.exit_code == 0, ok.output
    with sqlite3.connect(run / "store.sqlite") as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    log = json.loads(meta["fitness_changes"])
    assert len(log) == 1 and log[0]["changed"] == [f"score: {score}"]
    assert json.loads(meta["fitness_digest"]) == log[0]["after"] != log[0]["before"]
    # Accepted once, the new code is the reference: the next resume goes on without the flag.
    assert invoke("resume", str(run), "--max-evals", str(n + 10)).exit_code == 0


def test_lm_eval_task_folder_is_digested(tmp_path):
    folder = tmp_path / "fitness" / "mytask"
    folder.mkdir(parents=True)
    (folder / "mytask.yaml").write_text("task: mytask\n")
    (folder / "test.jsonl").write_text('{"q": "a", "a": "b"}\n')
    cfg = parse_fitness_config(
        {"tasks": [{"kind": "lm_eval", "task": "mytask", "include_path": "fitness/mytask"}]}
    )
    first = fitness_digests(cfg, tmp_path)
    assert list(first) == [f"mytask: {folder}"]
    (folder / "__pycache__").mkdir()  # caches do not count
    (folder / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert fitness_digests(cfg, tmp_path) == first
    (folder / "test.jsonl").write_text('{"q": "a", "a": "c"}\n')
    assert fitness_digests(cfg, tmp_path) != first
