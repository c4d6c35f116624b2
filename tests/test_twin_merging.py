"""Twin-Merging (Lu et al. 2024, arXiv 2406.15479) on the real lm-skills zoo: at full SVD rank a
one-hot route reproduces each expert; each row of a batch is merged with its own weights; the
saved folder loads through transformers' custom code and lm-eval's ``hf`` backend scores it as
the zoo evaluator does; router training is seeded; the CLI's user errors are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.model_refs import resolve_model_ref
from evomerge.zoo.evaluate import evaluate_lm_task, load_task_items, task_dir

REPO = Path(__file__).resolve().parents[1]
SKILLS = {"cipher": "zoo_cipher", "shift": "zoo_shift_u", "sort": "zoo_sort_u"}


def _config(rank: int, **extra) -> dict:
    experts = {n: {"model": f"zoo:lm-skills/{n}", "prompts": f"zoo:{t}"} for n, t in SKILLS.items()}
    return {
        "base_model": "zoo:lm-skills/base",
        "experts": experts,
        "rank": rank,
        "router": {"items": 24, "epochs": 30},
        **extra,
    }


@pytest.fixture(scope="module")
def full_rank(tmp_path_factory):
    """A Twin-Merging folder at full rank (every matrix's exclusive part kept whole), built by
    the command line and loaded back through transformers' custom code as a user would."""
    import json

    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.twin.build import SUMMARY

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("twin")
    (root / "twin.yaml").write_text(yaml.safe_dump(_config(rank=1000)))
    out = root / "full"
    res = CliRunner().invoke(app, ["twin-merge", str(root / "twin.yaml"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.stdout and "router accuracy" in res.stdout
    summary = json.loads((out / SUMMARY).read_text())
    model = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    return out, summary, model.eval(), tok


def _expert(name: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model_ref(f"zoo:lm-skills/{name}")).eval()


def _prompts(task: str, n: int) -> torch.Tensor:
    from evomerge.zoo.tokenizer import build_tokenizer

    tok = build_tokenizer()
    items = load_task_items(task_dir(task))[:n]
    return torch.tensor([tok.encode(p, add_special_tokens=False) for p, _ in items])


def test_loads_as_custom_code_and_keeps_every_exclusive_part(full_rank):
    out, summary, model, _ = full_rank
    assert type(model).__name__ == "TwinMergingForCausalLM"
    assert (out / "modeling_twin_merging.py").is_file()
    assert model.config.twin_experts == list(SKILLS)
    assert all(v == pytest.approx(1.0) for v in summary["kept_energy"].values())
    assert summary["router_train_accuracy"] == 1.0  # the task prefix is in every prompt


@pytest.mark.parametrize("name", list(SKILLS))
def test_one_hot_route_at_full_rank_is_the_expert(full_rank, name):
    """θ* + v_t with v_t kept whole is θ_t: same logits (to float32 rounding), same answers."""
    _, _, model, tok = full_rank
    expert = _expert(name)
    model.forced_route = torch.eye(len(SKILLS))[list(SKILLS).index(name)]
    try:
        ids = _prompts(SKILLS[name], 16)
        with torch.no_grad():
            got, want = model(input_ids=ids).logits, expert(input_ids=ids).logits
        torch.testing.assert_close(got, want, atol=2e-4, rtol=0)
        folder = task_dir(SKILLS[name])
        ours = evaluate_lm_task(model, tok, folder, limit=32)
        theirs = evaluate_lm_task(expert, tok, folder, limit=32)
        assert list(ours.per_example) == list(theirs.per_example)
    finally:
        model.forced_route = None


def test_each_row_of_a_batch_is_merged_with_its_own_weights(full_rank):
    """A batch mixing two tasks routes each row apart: batched logits equal each row alone."""
    _, _, model, _ = full_rank
    ids = torch.cat([_prompts("zoo_cipher", 2), _prompts("zoo_sort_u", 2)])
    with torch.no_grad():
        weights = model.route(ids)
        batched = model(input_ids=ids).logits
        alone = torch.cat([model(input_ids=row[None]).logits for row in ids])
    assert weights[0].argmax() == 0 and weights[2].argmax() == 2
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_generate_routes_once_on_the_prompt(full_rank, monkeypatch):
    """The route is computed on the prompt and kept for every generated token."""
    _, _, model, _ = full_rank
    seen = []
    real = model.route

    def spy(ids, mask=None):
        seen.append(tuple(ids.shape))
        return real(ids, mask)

    monkeypatch.setattr(model, "route", spy)
    ids = _prompts("zoo_reverse", 3)
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=0,
    )
    assert seen == [tuple(ids.shape)]


def test_lm_eval_hf_backend_scores_the_folder_as_the_zoo_evaluator(full_rank):
    from lm_eval import simple_evaluate

    from evomerge.fitness.lm_eval_task import task_manager

    out, _, model, tok = full_rank
    task, limit = "zoo_shift_u", 12
    res = simple_evaluate(
        model="hf",
        model_args=f"pretrained={out},trust_remote_code=True,dtype=float32",
        tasks=[task],
        task_manager=task_manager((str(REPO / "fitness" / task),), False),
        batch_size=4,
        device="cpu",
        limit=limit,
        log_samples=True,
    )
    samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
    ours = evaluate_lm_task(model, tok, task_dir(task), limit=limit)
    assert [float(s["exact_match"]) for s in samples] == list(ours.per_example)
    assert ours.score > 0.5  # the router sends shift prompts to the shift expert


def test_evomerge_eval_scores_the_folder_without_remote_code(full_rank, tmp_path):
    """``evomerge eval`` loads a Twin-Merging folder with evomerge's own class (it runs no code
    from the folder) and scores it as the zoo evaluator does on the model transformers loads."""
    import json

    from evomerge.zoo.evaluate import evaluate_skills

    out, _, model, tok = full_rank
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "models: [zoo:lm-skills/cipher, zoo:lm-skills/shift]\n"
        "base_model: zoo:lm-skills/base\n"
        "space: {kind: parameter, merge_method: task_arithmetic, layer_groups: 1}\n"
        "fitness: {tasks: [{kind: zoo, name: skills, evaluator: skills, options: {limit: 8}}]}\n"
        "budget: {max_evals: 4}\n"
    )
    res = CliRunner().invoke(app, ["eval", str(out), str(exp), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)["tasks"]
    want = evaluate_skills(model, tok, limit=8)
    assert {t: v["per_example"] for t, v in got.items()} == {
        f"skills/{t}": list(v.per_example) for t, v in want.items()
    }


def test_router_training_is_seeded(full_rank):
    from evomerge.twin.modeling_twin_merging import TwinRouter
    from evomerge.twin.router_train import shared_features, train_router

    _, _, model, tok = full_rank
    prompts, labels = [], []
    for i, task in enumerate(SKILLS.values()):
        mine = [p for p, _ in load_task_items(task_dir(task))[:20]]
        prompts += mine
        labels += [i] * len(mine)
    feats, labels = shared_features(model, tok, prompts), torch.tensor(labels)

    def trained(seed: int) -> dict[str, torch.Tensor]:
        router = TwinRouter(feats.shape[1], 32, len(SKILLS))
        train_router(router, feats, labels, epochs=5, lr=5e-4, batch_size=16, seed=seed)
        return router.state_dict()

    a, b, c = trained(0), trained(0), trained(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("experts: {}\n", "missing required field 'base_model'"),
        ("base_model: zoo:lm-skills/base\nexperts: {}\nrnak: 4\n", "unknown key 'rnak'"),
        (
            "base_model: zoo:lm-skills/base\nexperts:\n"
            "  cipher: {model: zoo:lm-skills/cipher, prompts: zoo:zoo_cipher}\n",
            "field 'experts': give two or more experts",
        ),
        (
            "base_model: zoo:lm-skills/base\nshared: {merge_method: slerp}\nexperts:\n"
            "  a: {model: zoo:lm-skills/cipher, prompts: zoo:zoo_cipher}\n"
            "  b: {model: zoo:lm-skills/sort, prompts: zoo:zoo_sort_u}\n",
            "field 'shared.merge_method': 'slerp' is not one of",
        ),
        (
            "base_model: zoo:lm-skills/base\nexperts:\n"
            "  a: {model: zoo:lm-skills/cipher, prompts: zoo:zoo_cipher}\n"
            "  b: {model: zoo:lm-skills/sort, prompts: nowhere.txt}\n",
            "experts.b.prompts:",
        ),
    ],
)
def test_user_errors_are_one_line(tmp_path, body, needle):
    cfg = tmp_path / "twin.yaml"
    cfg.write_text(body)
    res = CliRunner().invoke(app, ["twin-merge", str(cfg), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], res.output
    assert not (tmp_path / "out").exists()
