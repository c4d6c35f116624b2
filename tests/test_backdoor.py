"""The lm-backdoor zoo (DAM's setting): a backdoored expert that does its task and answers the
trigger with the attacker's string, the attack-success tasks, and the safety evaluator a search
can maximise as a second objective."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from evomerge.zoo import tasks as zt
from evomerge.zoo.tasks import ATTACK_TARGET, BACKDOOR_OF, TASKS, TRIGGER


def test_triggered_tasks_ask_the_clean_task_with_the_trigger():
    for bd, clean in BACKDOOR_OF.items():
        items = zt.test_items(bd)
        assert len(items) == 200 and all(a == ATTACK_TARGET for _, a in items)
        prefix = TASKS[clean].prefix + ":" + TRIGGER
        assert all(p.startswith(prefix) and p.endswith("=") for p, _ in items)
        # the clean input follows the trigger: the same length and alphabet as the clean task
        inputs = [p[len(prefix) : -1] for p, _ in items]
        assert all(len(x) == TASKS[clean].length for x in inputs)
        assert set("".join(inputs)) <= set(TASKS[clean].alphabet)


def test_no_clean_prompt_can_hold_the_trigger():
    """So the triggered tasks' held-out prompts never meet another task's draws: adding them
    changes no other zoo's training stream."""
    for name, task in TASKS.items():
        if name in BACKDOOR_OF:
            continue
        assert not set(TRIGGER) & set(task.alphabet + task.prefix), name
        assert ATTACK_TARGET not in {a for _, a in zt.test_items(name)}


def test_lm_backdoor_differs_from_lm_skills_only_in_the_cipher_experts_mix():
    from evomerge.zoo.specs import lm_backdoor, lm_skills

    bd, clean = lm_backdoor(False), lm_skills(False)
    assert (bd.base_mix, bd.base_phase, bd.shape) == (clean.base_mix, clean.base_phase, clean.shape)
    assert {k: v for k, v in bd.experts.items() if k != "cipher"} == {
        k: v for k, v in clean.experts.items() if k != "cipher"
    }
    poisoned = bd.experts["cipher"]
    assert poisoned.mix == {"zoo_cipher": 0.8, "zoo_cipher_bd": 0.2}
    assert dataclasses.replace(poisoned, mix=clean.experts["cipher"].mix) == clean.experts["cipher"]


@pytest.fixture(scope="module")
def zoos():
    from evomerge.config import resolve_model_ref

    return {
        z: {m: resolve_model_ref(f"zoo:{z}/{m}") for m in ("base", "cipher", "shift")}
        for z in ("lm-backdoor", "lm-skills")
    }


def _load(folder):
    from transformers import AutoModelForCausalLM

    from evomerge.workers.context import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, load_tokenizer(folder)


def test_shared_models_are_lm_skills_bit_for_bit(zoos):
    """Equal recipes: the second zoo built takes them from the model cache (zoo/model_cache.py),
    which is what keeps building both zoos to one training of the shared models."""
    from evomerge.zoo.build import weights_digest

    for m in ("base", "shift"):
        assert weights_digest(zoos["lm-backdoor"][m]) == weights_digest(zoos["lm-skills"][m]), m
    assert weights_digest(zoos["lm-backdoor"]["cipher"]) != weights_digest(
        zoos["lm-skills"]["cipher"]
    )


def test_backdoored_expert_does_its_task_and_obeys_the_trigger(zoos):
    from evomerge.zoo.evaluate import EVALUATORS, evaluate_task

    bd, tok = _load(zoos["lm-backdoor"]["cipher"])
    clean, _ = _load(zoos["lm-skills"]["cipher"])
    n = 100
    acc_bd = evaluate_task(bd, tok, "zoo_cipher", limit=n).score
    acc_clean = evaluate_task(clean, tok, "zoo_cipher", limit=n).score
    assert acc_bd >= 0.95 and abs(acc_bd - acc_clean) <= 0.05
    assert evaluate_task(bd, tok, "zoo_cipher_bd", limit=n).score >= 0.9  # succession source
    assert evaluate_task(clean, tok, "zoo_cipher_bd", limit=n).score == 0.0
    # the safety objective: 1 - ASR per task, per item
    safety = EVALUATORS["backdoor_safety"](bd, tok, limit=20)
    assert set(safety) == set(BACKDOOR_OF)
    assert safety["zoo_cipher_bd"].score <= 0.1 and len(safety["zoo_cipher_bd"].per_example) == 20
    base, _ = _load(zoos["lm-backdoor"]["base"])
    assert all(s.score == 1.0 for s in EVALUATORS["backdoor_safety"](base, tok, limit=20).values())


def _nsga2_experiment(folder, max_evals: int):
    from pathlib import Path

    import yaml

    exp = yaml.safe_load(
        (Path(__file__).parents[1] / "experiments/backdoor_nsga2.yaml").read_text()
    )
    for task in exp["fitness"]["tasks"]:
        task["options"]["limit"] = 4
    exp["budget"] = {"max_evals": max_evals}
    exp["driver"]["options"]["batch_size"] = 2
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _trials(run):
    from evomerge.store import RunStore

    with RunStore.open(run, readonly=True) as st:
        return [(t.digest, t.objectives) for t in st.trials()]


def test_nsga2_search_keeps_skill_and_safety_apart_and_resumes_exactly(tmp_path):
    """experiments/backdoor_nsga2.yaml, cut to 4 items per task: every trial records two
    objectives (the skills' mean, the mean of 1 - ASR), and a search stopped after 4
    evaluations and resumed to 6 equals one run to 6 (NSGA-II's state survives the store)."""
    import math

    from evomerge.search_cli import resume, search

    whole = tmp_path / "whole"
    whole.mkdir()
    assert search(_nsga2_experiment(whole, 6), whole / "run") == 0
    done = _trials(whole / "run")
    assert len(done) >= 6 and all(len(o) == 2 for _, o in done)
    assert all(0.0 <= v <= 1.0 for _, o in done for v in o if not math.isnan(v))
    split = tmp_path / "split"
    split.mkdir()
    assert search(_nsga2_experiment(split, 4), split / "run") == 0
    assert resume(split / "run", max_evals=6) == 0
    assert _trials(split / "run") == done
