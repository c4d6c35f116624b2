"""The in-process lm-eval score equals a fresh lm-eval ``hf`` run on the saved folder, item by item.

The fresh run is what a user runs by hand: ``simple_evaluate(model="hf",
model_args="pretrained=FOLDER")``, which loads model and tokenizer from disk. The in-process
score wraps a model that is already in memory (evomerge's adapter). Both see the same items with
the same settings; every item's metric must be equal, and so the score.

* SmolLM2-135M-Instruct with its chat template: a log-likelihood multiple-choice task and a
  greedy generation task with few-shot examples as earlier chat turns (``fitness/smollm2_chat_*``).
  The model in memory is the folder loaded by transformers: the materializer's resident model
  does not yet tie SmolLM2's embeddings to its LM head.
* The zoo's lm-skills base on a generation task, with the model a search's worker holds (the
  materializer's resident model, materialized from the folder).
* Racing's slices on SmolLM2: a few items at a time, in a shuffled order, score each item as
  the full run does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.fitness import build_fitness, parse_fitness_config

REPO = Path(__file__).resolve().parents[1]
CHAT = {"apply_chat_template": True, "batch_size": 8}
MC = {"task": "smollm2_chat_mc", "limit": 8, **CHAT}
GEN = {"task": "smollm2_chat_gen", "num_fewshot": 2, "fewshot_as_multiturn": True, **CHAT}
GEN["limit"] = 8


def hf_run(folder: Path, task: dict) -> list[float]:
    """Per-item metric of a fresh lm-eval ``hf`` run on ``folder``, in doc order."""
    from lm_eval import simple_evaluate

    from evomerge.fitness.lm_eval_task import task_manager

    metric = {"smollm2_chat_mc": "acc"}.get(task["task"], "exact_match")
    kw = {k: task[k] for k in ("num_fewshot", "fewshot_as_multiturn", "limit") if k in task}
    out = simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype=float32",
        tasks=[task["task"]],
        task_manager=task_manager((str(REPO / "fitness" / task["task"]),), False),
        batch_size=task["batch_size"],
        device="cpu",
        apply_chat_template=task.get("apply_chat_template", False),
        log_samples=True,
        **kw,
    )
    samples = sorted(out["samples"][task["task"]], key=lambda s: s["doc_id"])
    return [float(s[metric]) for s in samples]


def in_process(model, tokenizer, task: dict):
    include = str(REPO / "fitness" / task["task"])
    cfg = parse_fitness_config({"tasks": [{"kind": "lm_eval", "include_path": include, **task}]})
    return build_fitness(cfg)(model, tokenizer).tasks[task["task"]]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from evomerge.eval_cli import load_model

    model, tokenizer = load_model(smollm2_dir)
    return smollm2_dir, model, tokenizer


@pytest.mark.parametrize("task", [MC, GEN], ids=["loglikelihood_mc", "generate_fewshot"])
def test_smollm2_chat_task_equals_fresh_hf_run(smollm2, task):
    folder, model, tokenizer = smollm2
    ours = in_process(model, tokenizer, task)
    want = hf_run(folder, task)
    assert list(ours.per_example) == want
    assert ours.score == pytest.approx(sum(want) / len(want), abs=1e-12)
    assert 0 < ours.score < 1  # items the model gets right and wrong: the check has teeth


def test_chat_template_changes_what_the_model_is_asked(smollm2):
    """Off, the same items are plain text completions and score differently: the flag is used."""
    _, model, tokenizer = smollm2
    first = {**GEN, "limit": 4}  # the chat run answers all four right
    chat = in_process(model, tokenizer, first)
    plain = in_process(model, tokenizer, {**first, "apply_chat_template": False})
    assert plain.per_example != chat.per_example


def test_resident_model_equals_fresh_hf_run():
    """A search worker's resident model (materialized in place from the experts' tensors)
    scores each item as lm-eval does on the folder it came from."""
    from evomerge.config import resolve_model_ref
    from evomerge.recipe import ModelRef, Recipe
    from evomerge.workers.context import load_tokenizer
    from evomerge.workers.materialize import ExpertCache, Materializer

    folder = resolve_model_ref("zoo:lm-skills/base")
    recipe = Recipe(merge_method="passthrough", models=[ModelRef(model=folder)])
    model = Materializer(ExpertCache()).materialize(recipe)
    task = {"task": "zoo_cipher", "limit": 16, "batch_size": 8}
    ours = in_process(model, load_tokenizer(folder), task)
    want = hf_run(Path(folder), task)
    assert list(ours.per_example) == want and 0 < ours.score < 1


@pytest.mark.parametrize("task", [MC, GEN], ids=["loglikelihood_mc", "generate_fewshot"])
def test_racing_slices_score_each_item_as_the_full_run(smollm2, task):
    """Racing scores a few items at a time, in its own order: lm-eval's batches then hold
    other items and other padding (left padding for generation). On the real model every
    item's metric is the full run's, in slices of 3 and of 5 items in a shuffled order."""
    import random

    _, model, tokenizer = smollm2
    task = {k: v for k, v in task.items() if k != "limit"}  # all 12 items of the task
    include = str(REPO / "fitness" / task["task"])
    cfg = parse_fitness_config({"tasks": [{"kind": "lm_eval", "include_path": include, **task}]})
    fit = build_fitness(cfg)
    want = fit(model, tokenizer).tasks[task["task"]].per_example
    assert 0 < sum(want) < len(want)
    for size in (3, 5):
        order = list(range(len(want)))
        random.Random(size).shuffle(order)
        got = {}
        for i in range(0, len(order), size):
            pos = order[i : i + size]
            scored = fit(model, tokenizer, {task["task"]: pos}).tasks[task["task"]]
            got.update(zip(pos, scored.per_example, strict=True))
        assert [got[p] for p in range(len(want))] == list(want), f"slices of {size}"
