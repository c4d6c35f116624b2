"""The smollm2-experts zoo: its task folders (what the search and validation score) and the
determinism of its LoRA training on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from evomerge.zoo import real_tasks

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["real_ps.yaml", "real_ps_racing.yaml", "real_dfs.yaml", "real_hybrid.yaml"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_committed_folders_are_the_generated_ones(tmp_path):
    real_tasks.write_task_folders(tmp_path)
    for name in real_tasks.TASKS:
        for f in sorted((tmp_path / name).iterdir()):
            committed = REPO / "fitness" / name / f.name
            assert committed.read_text() == f.read_text(), f"regenerate {committed}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_search_and_validation_items_are_disjoint(experiment):
    from evomerge.config import load_experiment

    cfg = load_experiment(REPO / "experiments" / experiment)
    for task in cfg.fitness.tasks:
        rows = _rows(REPO / "fitness" / task.task / "test.jsonl")
        search = rows[: task.limit]
        validation = rows[task.limit : task.limit + cfg.fitness.validation.items]
        assert len(search) == task.limit and len(validation) == cfg.fitness.validation.items
        shots = {r["question"] for r in _rows(REPO / "fitness" / task.task / "train.jsonl")}
        questions = [r["question"] for r in search + validation]
        assert len(set(questions)) == len(questions)  # no item both searched and validated
        assert not shots & set(questions)  # the few-shot examples are not scored


def test_gold_loglik_twin_scores_the_answer_after_the_chat(smollm2_dir):
    """real_target_gold_loglik, run by evomerge's lm-eval fitness as real_ps.yaml runs the
    target, gives each item the log-likelihood of its answer and <|im_end|> after the chat,
    computed here directly from the model's logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.fitness import build_fitness, parse_fitness_config

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    task = {
        "kind": "lm_eval",
        "task": "real_target_gold_loglik",
        "include_path": str(REPO / "fitness" / "real_target"),
        "apply_chat_template": True,
        "system_instruction": real_tasks.SYSTEM,
        "limit": 3,
    }
    got = build_fitness(parse_fitness_config({"tasks": [task]}))(model, tok)
    ours = got.tasks["real_target_gold_loglik"]
    want = []
    for row in _rows(REPO / "fitness" / "real_target" / "test.jsonl")[:3]:
        chat = tok.apply_chat_template(
            real_tasks.messages(row["question"]), add_generation_prompt=True, tokenize=False
        )
        ctx = tok.encode(chat, add_special_tokens=False)
        cont = tok.encode(row["answer"] + "<|im_end|>", add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1]
        want.append(float(torch.log_softmax(logits, -1)[torch.arange(len(cont)), cont].sum()))
    assert ours.per_example == pytest.approx(want, abs=1e-3)
    assert ours.score == pytest.approx(sum(want) / 3, abs=1e-3)


def test_answers_follow_the_rules():
    for q, a in real_tasks.items("real_target")[0][:20]:
        words = q.split(" of ")[1].removesuffix(" up by one.").split()
        digits = "".join(str(real_tasks.ZEL.index(w)) for w in words)
        assert a == real_tasks.to_zel(real_tasks.shifted(digits))
    assert real_tasks.shifted("0919") == "1020"
    assert real_tasks.to_zel("472") == "pe vi mi"


def test_training_never_draws_a_scored_question():
    held = real_tasks.held_out()
    mix = {name: 1.0 for name in real_tasks.GENERATORS}
    draw = real_tasks.sampler(mix, random.Random(0))
    drawn = [draw()[0] for _ in range(3000)]
    assert not held & set(drawn)
    # the generators do produce held-out questions: the filter is what keeps them out
    raw = random.Random(0)
    assert any(real_tasks.target_item(raw)[0] in held for _ in range(20000))


def test_expert_training_is_deterministic(smollm2_dir, tmp_path, capfd):
    """Two trainings of a tiny expert (2 steps, batch 2), one here and one in the build's own
    child process, write the same adapter bytes; a third with another seed does not (so the
    check can fail). The child prints its step lines and nothing from the libraries."""
    pytest.importorskip("peft")
    from evomerge.zoo.build import deterministic_cpu
    from evomerge.zoo.real_experts import AdapterExpert, _train_side_by_side, train_adapter

    ex = AdapterExpert("real_shift", {"shift": 1.0, "zel_write": 1.0}, steps=2, lr=2e-3, batch=2)
    with deterministic_cpu(1):
        for name, seed in (("a", 7), ("c", 8)):
            train_adapter(smollm2_dir, ex, tmp_path / name, seed=seed, progress=False)
    capfd.readouterr()
    _train_side_by_side(smollm2_dir, [("b", ex, 7)], tmp_path, threads=1, progress=True)
    child_err = capfd.readouterr().err
    out = {n: (tmp_path / n / "adapter_model.safetensors").read_bytes() for n in "abc"}
    assert out["a"] == out["b"]
    assert out["a"] != out["c"]
    assert "b: step 2/2 loss" in child_err
    for noise in ("Warning", "Loading weights", "Writing model shards", "it/s"):
        assert noise not in child_err, child_err
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(smollm2_dir)
    # evomerge eval takes the adapter folder as a model: applied to its base in a temp folder
    from evomerge.eval_target import open_target

    with open_target(tmp_path / "a") as target:
        assert target.kind == "adapter"
        assert (target.folder / "config.json").is_file()


def test_language_remap_moves_only_its_rows_and_blocks(smollm2_dir, tmp_path):
    """A few-step language expert (zoo/zel_remap.py): the reader changes only Zel input rows,
    the writer exactly the 30 digit and Zel rows of the (untied) head, the LoRA only the
    projections of its blocks; everything else is the instruct model's. Byte-deterministic for
    a seed, another seed differs; the folder is a plain transformers model (untied)."""
    pytest.importorskip("peft")
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from evomerge.zoo.build import deterministic_cpu
    from evomerge.zoo.zel_remap import RemapExpert, build_language_expert
    from evomerge.zoo.zel_texts import token_ids

    ex = RemapExpert("real_zel", reader_steps=1, reader_mse_steps=1, writer_steps=2,
                     writer_texts=4, lora_steps=1, lora_blocks=(0, 29), batch=2)  # fmt: skip
    with deterministic_cpu(1):
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            build_language_expert(smollm2_dir, ex, tmp_path / name, seed=seed)
    raw = {n: (tmp_path / n / "model.safetensors").read_bytes() for n in "abc"}
    assert raw["a"] == raw["b"]
    assert raw["a"] != raw["c"]

    got = load_file(str(tmp_path / "a" / "model.safetensors"))
    base = {k: v.float() for k, v in load_file(str(smollm2_dir / "model.safetensors")).items()}
    ids = token_ids(AutoTokenizer.from_pretrained(smollm2_dir))
    zel = sorted(ids["bare"] + ids["space"])
    emb = base["model.embed_tokens.weight"]

    def changed_rows(t):
        return (t != emb).any(dim=1).nonzero().flatten().tolist()

    read = changed_rows(got["model.embed_tokens.weight"])  # the rows this step's texts used
    assert read and set(read) <= set(zel)
    assert changed_rows(got["lm_head.weight"]) == sorted(zel + ids["digit"])
    moved = {k for k in base if k in got and not torch.equal(got[k], base[k])}
    projections = {k for k in moved if ".layers." in k}
    assert moved - projections == {"model.embed_tokens.weight"}
    assert {int(k.split(".layers.")[1].split(".")[0]) for k in projections} == {0, 29}
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False


def test_child_process_rebuilds_each_expert_from_its_json():
    """The build sends each expert to its training process as JSON; the child must rebuild the
    same recipe (tuples and nested pairs included), or a cached build would train another one."""
    import dataclasses

    from evomerge.zoo.real_experts import _expert_from_json, smollm2_experts

    for quick in (False, True):
        for ex in smollm2_experts(quick).experts.values():
            sent = json.loads(json.dumps(dataclasses.asdict(ex)))
            assert _expert_from_json(sent) == ex
    sent["lora_blocks"] = [0]  # a different recipe is not read back as the same one
    assert _expert_from_json(sent) != ex
