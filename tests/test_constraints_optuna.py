"""An Optuna search under a constraint, end to end (docs/fitness.md, Constraints): TPE merges
the lm-backdoor zoo's backdoored cipher expert with the shift expert, scored on the lm-skills
tasks, under the bound backdoor_safety (1 - attack success rate) >= 0.95. Real zoo models,
real merges, real SQLite, real Optuna; the study is read back from the run's driver state."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest

from evomerge.fitness.constraints import entry_score
from evomerge.store import RunStore

BOUND = 0.95
EXPERIMENT = f"""
name: backdoor_optuna
models: [zoo:lm-backdoor/cipher, zoo:lm-backdoor/shift]
base_model: zoo:lm-backdoor/base
space: {{kind: parameter, merge_method: ties, global_params: [lambda]}}
fitness:
  tasks:
    - {{kind: zoo, name: skills, evaluator: skills, options: {{limit: 6}}}}
  constraints:
    - task: {{kind: zoo, name: safety, evaluator: backdoor_safety, options: {{limit: 6}}}}
      min: {BOUND}
driver:
  name: optuna
  options: {{sampler: tpe, batch_size: 4, n_startup_trials: 8}}
budget: {{max_evals: 16}}
seed: 0
archive: {{top_k: 2}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from evomerge.commands.search import search

    tmp = tmp_path_factory.mktemp("optuna_constrained")
    (tmp / "exp.yaml").write_text(EXPERIMENT)
    assert search(tmp / "exp.yaml", tmp / "run") == 0
    return tmp / "run"


def _read(run: Path):
    from evomerge.drivers.optuna_sampler import _load_study

    with RunStore.open(run, readonly=True) as st:
        trials, archive = [t for t in st.trials() if t.ok], st.archive()
        study = _load_study(pickle.loads(st.last_checkpoint().driver_state)["study"])
    return trials, archive, study


def test_the_winner_is_feasible_and_the_study_holds_every_constraint_value(run):
    import optuna

    trials, archive, study = _read(run)
    safety = {t.idx: entry_score(t.scores, "safety") for t in trials}
    feasible = {i for i, s in safety.items() if s >= BOUND}
    assert feasible and len(feasible) < len(trials)  # the bound really cuts the search
    # the archive and the winner: feasible only, the winner the best feasible candidate
    assert archive and all(e.idx in feasible for e in archive)
    best_feasible = max(t.fitness for t in trials if t.idx in feasible)
    assert archive[0].fitness == best_feasible
    assert max(t.fitness for t in trials if t.idx not in feasible) > best_feasible  # kept out
    # every candidate's trial in the study carries its constraint value, BOUND - safety
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    by_genes = {tuple(tr.params[f"x{i}"] for i in range(len(tr.params))): tr for tr in done}
    for t in trials:
        tr = by_genes[tuple(t.genes)]
        assert tr.constraints == {"0": pytest.approx(BOUND - safety[t.idx])}, t.idx
        assert (tr.constraints["0"] <= 0) == (t.idx in feasible)
        assert tr.value == pytest.approx(t.fitness)  # told the plain objective, not a penalty
    # Optuna's own best is feasible, and it is the winner's score
    assert study.best_trial.constraints["0"] <= 0
    assert math.isclose(study.best_value, archive[0].fitness)
