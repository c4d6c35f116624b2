"""Thread defaults (workers/threads.py): the serial evaluator leaves busy cores alone, an explicit
``evaluation.threads`` is obeyed and restored afterwards, and ``status`` shows the choice."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from evomerge import search_cli
from evomerge.workers import threads
from tests.helpers.search_fixtures import make_family, write_experiment


def test_an_explicit_count_is_obeyed_and_an_excess_warned():
    assert threads.choose_serial(1).intra == 1
    too_many = threads.available_cores() + 1
    with pytest.warns(UserWarning, match="evaluation.threads"):
        assert threads.choose_serial(too_many).intra == too_many
    assert threads.choose_ray(None, 2.5).intra == 2
    assert threads.choose_ray(None, 0.5).intra == 1  # a fractional CPU still runs one thread


def test_omp_num_threads_is_obeyed_unless_the_experiment_sets_threads(monkeypatch):
    """Two searches started at the same moment each see every core free; OMP_NUM_THREADS (as
    torch reads it) pins them instead, and evaluation.threads still wins over it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose_serial(None) == threads.ThreadChoice(1, 1, "OMP_NUM_THREADS")
    assert threads.choose_serial(2).intra == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1,1")  # nested levels: the first is ours
    assert threads.choose_serial(None).intra == 1
    for unusable in ("0", "abc", ""):  # not a positive count: the automatic choice
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert threads.choose_serial(None).reason.startswith("auto")


def test_auto_leaves_the_core_of_a_busy_process_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the automatic choice is measured
    cores = threads.available_cores()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # let it be scheduled
        busy = threads.busy_cores()
        choice = threads.choose_serial(None)
    finally:
        hog.kill()
        hog.wait()
    assert busy >= 0.6, f"a spinning process should show as ~1 busy core, measured {busy:.2f}"
    assert choice.intra <= max(1, cores - 1)
    assert choice.interop == 1


def test_search_applies_threads_restores_them_and_status_shows_them(tmp_path, capsys):
    fam = make_family(tmp_path / "models", n_experts=2, layers=2, hidden=16)
    exp = write_experiment(tmp_path, fam, max_evals=4, popsize=4)
    exp.write_text(exp.read_text().replace("timeout_s: 60}", "timeout_s: 60, threads: 1}"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert search_cli.search(exp, tmp_path / "run") == 0
        assert torch.get_num_threads() == 2  # the evaluator's choice ended with the search
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert "threads: 1 torch thread(s), 1 interop (evaluation.threads), serial" in err
    assert search_cli.status(tmp_path / "run") == 0
    assert (
        "threads 1 torch thread(s), 1 interop (evaluation.threads), serial"
        in capsys.readouterr().out
    )
