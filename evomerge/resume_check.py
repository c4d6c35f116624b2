"""What ``evomerge resume`` checks before it writes anything, on a read-only store.

A resume may change what does not decide the candidates or their scores (budget, workers, ...)
and nothing else: not the structural config (``ExperimentConfig.structural_diff``) and not the
fitness code behind it (``evomerge.fitness.digest``), unless the user says
``--allow-changed-fitness``, which is then recorded in the store's ``fitness_changes`` meta row.
The store is opened read-only here: a refusal leaves its bytes (and its ``-wal`` file, after a
kill) exactly as they were.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from evomerge.config import ExperimentConfig, experiment_from_json
from evomerge.errors import UserInputError
from evomerge.failures import any_baseline_scored
from evomerge.fitness.digest import changed, fitness_digests
from evomerge.store import RunStore

FITNESS_META = "fitness_digest"  # JSON {"<task>: <path>": digest}, written when a run starts
CHANGES_META = "fitness_changes"  # JSON list of the accepted changes (--allow-changed-fitness)


@dataclass(frozen=True)
class ResumePlan:
    cfg: ExperimentConfig
    resumed: bool  # a generation was committed (else the run starts afresh from its seed)
    config_changed: bool
    digests: dict[str, str]
    stored_digests: dict[str, str] | None
    fitness_changed: list[str] = field(default_factory=list)

    def record(self, store: RunStore) -> None:
        """The accepted changes, written once the store is open for writing."""
        if self.config_changed:
            store.update_config(self.cfg.to_json())
        if self.digests != self.stored_digests:
            store.set_meta(FITNESS_META, json.dumps(self.digests, sort_keys=True))
        if self.fitness_changed:
            log = store.get_json(CHANGES_META, [])
            log.append(
                {
                    "at": time.time(),
                    "changed": self.fitness_changed,
                    "before": self.stored_digests,
                    "after": self.digests,
                }
            )
            store.set_meta(CHANGES_META, json.dumps(log))


def check_resume(
    run_dir: Path,
    new_cfg: ExperimentConfig | None,
    allow_changed_fitness: bool,
    max_evals: int | None,
) -> ResumePlan:
    with RunStore.open(run_dir, readonly=True) as st:
        cfg = experiment_from_json(st.config_json(), origin=f"{run_dir}/store config")
        before = st.get_json(FITNESS_META)
        cp = st.last_checkpoint()
        scored_baseline = any_baseline_scored(st.search_baselines())
    if new_cfg is not None:
        _refuse_structural_change(run_dir, cfg, new_cfg)
        cfg = new_cfg
    done = cp.n_evals if cp is not None else 0
    if max_evals is not None and max_evals <= done:
        raise UserInputError(
            f"--max-evals {max_evals}: {run_dir} has made {done} evaluations already and "
            f"--max-evals is the run's total; give more than {done} to continue it"
        )
    now = fitness_digests(cfg.fitness, cfg.base_dir)
    diff = changed(before, now) if before is not None else []
    # Nothing scored yet (every baseline failed, no generation: a broken fitness the user has
    # just fixed): there are no scores for the new code to mix with.
    nothing_scored = cp is None and not scored_baseline
    if diff and not allow_changed_fitness and not nothing_scored:
        raise UserInputError(
            f"resume {run_dir}: the fitness code changed since the run started "
            f"({'; '.join(diff)}); its scores would mix with the stored ones. Restore it, start "
            "a new run (--run-dir), or pass --allow-changed-fitness to continue anyway"
        )
    return ResumePlan(cfg, cp is not None, new_cfg is not None, now, before, diff)


def _refuse_structural_change(run_dir: Path, old: ExperimentConfig, new: ExperimentConfig):
    changed_fields = old.structural_diff(new)
    if changed_fields:
        raise UserInputError(
            f"resume {run_dir}: the structural config changed ({', '.join(changed_fields)}); "
            "a resumed search must keep models, base_model, space, fitness, driver and "
            "seed — start a new run (--run-dir) to search something else"
        )
