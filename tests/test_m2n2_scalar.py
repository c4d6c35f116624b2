"""M2N2 on a fitness with one number per candidate (no per-example scores): a real search over
the lm-skills zoo towards a planted linear recipe. Without per-item scores the archive once
tied every member and each child overwrote slot 0 (the best was found at evaluation 3); the
fallback (the score is one resource) must keep improving after the initial archive, and warn
once, saying what to return."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path

from evomerge.config import load_experiment
from evomerge.session import open_search
from evomerge.store import RunStore

ARCHIVE = 6
# Negative squared distance of the candidate's weights to 0.2 * cipher + 0.8 * shift.
SCORE_PY = """\
import torch
from safetensors.torch import load_file

from evomerge.config import resolve_model_ref

def _load(name):
    return load_file(resolve_model_ref(name) + "/model.safetensors")

A, B = _load("zoo:lm-skills/cipher"), _load("zoo:lm-skills/shift")
TARGET = {k: 0.2 * A[k].float() + 0.8 * B[k].float() for k in A}

def score(model, tokenizer):
    sd = model.state_dict()
    return -float(sum(((sd[k].float() - t) ** 2).sum() for k, t in TARGET.items() if k in sd))
"""


def _experiment(tmp: Path, max_evals: int) -> Path:
    (tmp / "score.py").write_text(SCORE_PY)
    exp = tmp / "exp.yaml"
    exp.write_text(
        textwrap.dedent(f"""\
        models: [zoo:lm-skills/cipher, zoo:lm-skills/shift]
        space: {{kind: parameter, merge_method: linear, params: [weight], layer_groups: 2}}
        fitness: {{python: score.py:score}}
        driver: {{name: m2n2, options: {{archive_size: {ARCHIVE}, batch_size: 2}}}}
        budget: {{max_evals: {max_evals}}}
        evaluation: {{timeout_s: 60}}
        """)
    )
    return exp


def test_scalar_fitness_keeps_improving_and_warns_once(tmp_path, caplog):
    s = open_search(load_experiment(_experiment(tmp_path, 40)), tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="evomerge.drivers.m2n2"):
        s.run()
    warnings = [r.getMessage() for r in caplog.records if r.name == "evomerge.drivers.m2n2"]
    assert len(warnings) == 1 and "per-example" in warnings[0]
    assert "TaskScore.from_examples" in warnings[0]
    with RunStore.open(tmp_path / "run", readonly=True) as st:
        trials = [t for t in st.trials() if t.status == "OK" and not math.isnan(t.fitness)]
    first = max(t.fitness for t in trials if t.idx < ARCHIVE)
    best = max(trials, key=lambda t: t.fitness)
    assert best.idx >= ARCHIVE and best.fitness > first, (best.idx, best.fitness, first)
    # elitist: the archive is the best ARCHIVE of everything told (repeats are told again)
    told = sorted(t.fitness for t in trials)
    assert sorted(s.driver.archive[1].tolist()) == told[-ARCHIVE:]


def test_cli_prints_the_warning_as_one_line(tmp_path):
    exp = _experiment(tmp_path, 8)
    cmd = [sys.executable, "-m", "evomerge", "search", str(exp), "--run-dir", str(tmp_path / "r")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    hits = [line for line in p.stderr.splitlines() if "m2n2: task" in line]
    assert len(hits) == 1 and "Traceback" not in p.stderr, p.stderr
