"""Racing on an lm-eval fitness: real zoo experts (lm-skills), real lm-eval on local task folders,
real merges, real SQLite, a real SIGKILL.

The tasks are lm-skills' cipher and shift items as log-likelihood tasks (is the answer the
greedy continuation?), written to tmp: one forward pass per item keeps a search in seconds.
A racing search against the same search scoring every item: the same archive and winner, fewer
item evaluations (counted in the store, shown by ``status``), and a resume after a SIGKILL that
ends exactly where the uninterrupted run did.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from evomerge.commands.progress import progress_line
from evomerge.commands.status import status
from evomerge.loop import Progress
from evomerge.search_cli import resume, search
from evomerge.store import RunStore
from tests.helpers.kill_resume import cli, kill_at_random
from tests.test_racing import _racing_meta, _snapshot

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[1]
TASKS = ("cipher", "shift")
ITEMS = 8  # per task: a pool of 16
EVALS = 24  # 4 generations of 6
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _task_folder(root: Path, skill: str) -> str:
    folder = root / f"ll_{skill}"
    folder.mkdir()
    rows = (REPO / "fitness" / f"zoo_{skill}" / "test.jsonl").read_text().splitlines()
    (folder / "test.jsonl").write_text("\n".join(rows[:ITEMS]) + "\n")
    (folder / f"ll_{skill}.yaml").write_text(
        f"""task: ll_{skill}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "test.jsonl"}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
    )
    return str(folder)


def _experiment(root: Path, name: str, racing: bool) -> Path:
    tasks = "".join(
        f"\n    - {{kind: lm_eval, task: ll_{s}, include_path: {_task_folder(root / name, s)},"
        f" limit: {ITEMS}, batch_size: 1}}"
        for s in TASKS
    )
    race = "\n  racing: {first_slice: 6, slice: 5}" if racing else ""
    path = root / name / "exp.yaml"
    path.write_text(
        f"""name: racing_lm_eval
models:
  - zoo:lm-skills/cipher
  - zoo:lm-skills/shift
base_model: zoo:lm-skills/base
space: {{preset: ps_dare_ties, layer_groups: 1, x0: {{weight: 0.5}}}}
fitness:
  tasks:{tasks}{race}
driver: {{name: random, options: {{batch_size: 6}}}}
budget: {{max_evals: {EVALS}}}
seed: 3
archive: {{top_k: 2}}
"""
    )
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same random search scoring every item, and racing (run in this process)."""
    root = tmp_path_factory.mktemp("racing_lm_eval")
    out = {}
    for name, racing in (("plain", False), ("race", True)):
        (root / name).mkdir()
        exp = _experiment(root, name, racing)
        assert search(exp, root / name / "run") == 0
        out[name] = (exp, root / name / "run")
    return out


def test_racing_keeps_the_winner_and_archive_with_fewer_item_evaluations(runs, capsys):
    plain, race = (_snapshot(runs[k][1]) for k in ("plain", "race"))
    meta = _racing_meta(race[0])
    assert all(m and m["of"] == 2 * ITEMS for m in meta)
    short = [i for i, m in enumerate(meta) if m["items"] < m["of"]]
    assert short, "racing stopped no candidate early"
    with RunStore.open(runs["race"][1], readonly=True) as st:
        race_items = st.item_evals()
    with RunStore.open(runs["plain"][1], readonly=True) as st:
        plain_items = st.item_evals()
    assert plain_items == EVALS * 2 * ITEMS
    assert race_items == sum(m["items"] for m in meta) < plain_items
    # random search asks the same candidates either way; the fully scored ones score the same,
    # item for item, and the stopped ones were surely below the archive
    fits = sorted({p[7] for p in plain[0]}, reverse=True)
    assert fits[0] > fits[-1] + 0.25  # clearly separated candidates: the check has teeth
    for i, (p, r) in enumerate(zip(plain[0], race[0], strict=True)):
        assert p[2] == r[2]
        if i not in short:
            assert (p[7], p[9]) == (r[7], r[9])
        else:
            assert p[7] < race[1][-1][3]  # below the archive's last member
    assert race[1] == plain[1]  # the same archive, so the same winner
    capsys.readouterr()
    assert status(runs["race"][1]) == 0
    text = capsys.readouterr().out
    assert (
        f"item evaluations {race_items}  (racing stopped {len(short)} candidate(s) early)" in text
    )
    assert status(runs["plain"][1]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("item eval")]
    assert line.split(";")[0] == f"item evaluations {plain_items}"  # no racing part
    p = Progress(3, 24, 24, 0, 0.5, "d", 1.0, n_item_evals=race_items)
    assert progress_line(p, 1000) == f"gen 3 best 0.5000 failed 0 items {race_items}/1000"


def test_killed_and_resumed_equals_uninterrupted(runs, tmp_path):
    exp, full = runs["race"]
    killed, rng = tmp_path / "killed", random.Random(5)
    cmd = cli("search", str(exp), "--run-dir", str(killed))
    # SIGKILL the search inside a later generation, mid-race; then resume (here) to the end
    assert kill_at_random(cmd, killed, rng, ENV, within_s=0.4, deadline_s=300)
    with RunStore.open(killed, readonly=True) as st:
        assert st.last_checkpoint().generation < EVALS // 6 - 1  # it stopped short
    assert resume(killed) == 0
    assert _snapshot(killed) == _snapshot(full)
