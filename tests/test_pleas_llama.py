"""PLeaS for Llama (evomerge/model_merges/llama.py): on a tiny random Llama and a copy of it with
its residual channels, heads and MLP units shuffled, matching finds the shuffles and every merge
gives the model back; the merged folder loads with transformers."""

from __future__ import annotations

import random
import re

import pytest
import torch

from evomerge.errors import UserInputError
from evomerge.model_merges import llama as pleas_llama
from evomerge.zoo.tokenizer import CHARS, build_tokenizer

LAYERS, HIDDEN, INTER, HEADS = 2, 16, 24, 4
HEAD_DIM = HIDDEN // HEADS


def _tiny_llama(seed: int, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {
        "vocab_size": len(build_tokenizer()),
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": 32,
        "tie_word_embeddings": False,
    }
    cfg = LlamaConfig(**{**shape, **overrides})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger than the init's 0.02: distinct units, not all alike
        for name, p in model.named_parameters():
            p.copy_(
                1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p)
            )
    return model


def _shuffle(w: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None):
    """B[rows[i], cols[j]] = A[i, j]: B's unit rows[i] is A's unit i."""
    out = w.clone()
    if rows is not None:
        out[rows] = w.clone()
    if cols is not None:
        out2 = out.clone()
        out2[:, cols] = out
        out = out2
    return out


def _permuted_copy(model, resid, heads, mlp):
    """The same function, its residual channels, heads and MLP units renamed."""
    b = _tiny_llama(0)
    sa = model.state_dict()
    new = {}
    for key, w in sa.items():
        layer = int(key.split(".")[2]) if ".layers." in key else None
        dims = (
            None
            if layer is None
            else (heads[layer].unsqueeze(1) * HEAD_DIM + torch.arange(HEAD_DIM)).reshape(-1)
        )
        if key == "model.embed_tokens.weight":
            new[key] = _shuffle(w, None, resid)
        elif key == "lm_head.weight":
            new[key] = _shuffle(w, None, resid)
        elif "norm" in key:
            new[key] = _shuffle(w.unsqueeze(1), resid, None).squeeze(1)
        elif any(n in key for n in ("q_proj", "k_proj", "v_proj")):
            new[key] = _shuffle(w, dims, resid)
        elif "o_proj" in key:
            new[key] = _shuffle(w, resid, dims)
        elif "gate_proj" in key or "up_proj" in key:
            new[key] = _shuffle(w, mlp[layer], resid)
        else:  # down_proj
            new[key] = _shuffle(w, resid, mlp[layer])
    b.load_state_dict(new)
    return b.eval()


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    letters = CHARS[10:]
    return ["".join(rng.choice(letters) for _ in range(rng.randint(5, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def twins():
    g = torch.Generator().manual_seed(1)
    a = _tiny_llama(3)
    resid = torch.randperm(HIDDEN, generator=g)
    heads = [torch.randperm(HEADS, generator=g) for _ in range(LAYERS)]
    mlp = [torch.randperm(INTER, generator=g) for _ in range(LAYERS)]
    b = _permuted_copy(a, resid, heads, mlp)
    return a, b, (resid, heads, mlp), build_tokenizer()


def _logits(model, tok, texts):
    ids = [torch.tensor([tok.encode(t, add_special_tokens=False)]) for t in texts]
    with torch.no_grad():
        return torch.cat([model(input_ids=i).logits[0] for i in ids])


def test_the_shuffled_copy_is_the_same_function(twins) -> None:
    a, b, _, tok = twins
    texts = _texts(4, seed=9)
    torch.testing.assert_close(_logits(b, tok, texts), _logits(a, tok, texts), atol=1e-4, rtol=1e-4)


def test_matching_recovers_every_shuffle(twins) -> None:
    a, b, (resid, heads, mlp), tok = twins
    _, plan = pleas_llama.merge_llama(a, b, _texts(60, seed=0), tok, size=1.0, method="permute")
    assert torch.equal(plan.resid.b_merged, resid)
    for layer in range(LAYERS):
        dims = (heads[layer].unsqueeze(1) * HEAD_DIM + torch.arange(HEAD_DIM)).reshape(-1)
        assert torch.equal(plan.heads[layer].b_merged, dims)
        assert torch.equal(plan.mlp[layer].b_merged, mlp[layer])


@pytest.mark.parametrize(("method", "size"), [("permute", 1.0), ("pleas", 1.0), ("pleas", 1.5)])
def test_merging_the_shuffled_copy_gives_the_model_back(twins, method, size, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    a, b, _, tok = twins
    merged, plan = pleas_llama.merge_llama(a, b, _texts(60, seed=0), tok, size=size, method=method)
    assert merged.config.intermediate_size == round(INTER * size) == plan.mlp[0].width
    fresh = _texts(6, seed=5)  # texts the merge never saw
    torch.testing.assert_close(
        _logits(merged, tok, fresh), _logits(a, tok, fresh), atol=2e-3, rtol=1e-3
    )
    merged.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.intermediate_size == round(INTER * size)
    torch.testing.assert_close(_logits(loaded, tok, fresh), _logits(merged, tok, fresh))


def test_plain_average_of_the_shuffled_copy_is_not_the_model(twins) -> None:
    a, b, _, tok = twins
    merged, _ = pleas_llama.merge_llama(a, b, [], tok, method="average")
    texts = _texts(6, seed=5)
    assert (_logits(merged, tok, texts) - _logits(a, tok, texts)).abs().max() > 0.5


def test_refusals_name_the_flag(twins) -> None:
    a, b, _, tok = twins
    with pytest.raises(UserInputError, match=r"size: 2.5 is outside \[1, 2\]"):
        pleas_llama.merge_llama(a, b, [], tok, size=2.5)
    with pytest.raises(UserInputError, match="--size: plain averaging gives one model's width"):
        pleas_llama.merge_llama(a, b, ["ab"], tok, size=1.5, method="average")
    with pytest.raises(UserInputError, match="--model-b: .*grouped-query attention"):
        pleas_llama.merge_llama(a, _tiny_llama(0, num_key_value_heads=2), [], tok)
    with pytest.raises(UserInputError, match="--model-b: .*tensor shapes differ"):
        pleas_llama.merge_llama(a, _tiny_llama(0, intermediate_size=20), [], tok)


@pytest.fixture(scope="module")
def twin_folders(twins, tmp_path_factory):
    a, b, _, tok = twins
    root = tmp_path_factory.mktemp("twins")
    for name, model in (("a", a), ("b", b)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def _pleas_cli(*args: str):
    from typer.testing import CliRunner

    from evomerge.cli import app

    return CliRunner().invoke(app, ["pleas", *args])


def test_cli_writes_a_model_the_zoo_evaluator_scores(twins, twin_folders, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.zoo.evaluate import evaluate_lm_task, task_dir

    a, _, _, tok = twins
    out = tmp_path / "merged"
    ends = ["--model-a", str(twin_folders / "a"), "--model-b", str(twin_folders / "b")]
    res = _pleas_cli(*ends, "--size", "1.5", "--data", "zoo_cipher,zoo_reverse", str(out))
    assert res.exit_code == 0, res.output
    assert f"wrote {out} (pleas, size 1.5: intermediate_size 36)" in res.output
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert merged.config.intermediate_size == 36
    fresh = _texts(4, seed=5)
    torch.testing.assert_close(
        _logits(merged, tok, fresh), _logits(a, tok, fresh), atol=2e-3, rtol=1e-3
    )
    score = evaluate_lm_task(
        merged, AutoTokenizer.from_pretrained(out), task_dir("zoo_copy"), limit=5
    )
    assert len(score.per_example) == 5  # a random model scores ~0; what matters is that it runs


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--size", "2.5"], "--size 2.5: give a number between 1"),
        (["--method", "zip"], "--method 'zip' is unknown"),
        (["--method", "average", "--size", "1.5"], "--size: plain averaging keeps one model's"),
        ([], "--data: Llama models need data to match on"),
        (["--data", "zoo_nope"], "--data: 'zoo_nope' names no zoo task"),
        (["--data", "proxy:rot90"], "--data: 'proxy:rot90' names no zoo task"),
    ],
)
def test_cli_refusals_are_one_line_and_write_nothing(twin_folders, tmp_path, args, says) -> None:
    out = tmp_path / "merged"
    ends = ["--model-a", str(twin_folders / "a"), "--model-b", str(twin_folders / "b")]
    res = _pleas_cli(*ends, *args, str(out))
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], res.output
    assert not out.exists()


def test_cli_refuses_mixed_kinds_a_missing_model_and_a_full_out(twin_folders, tmp_path) -> None:
    from evomerge.zoo.digits import new_digits_model, save_digits_model

    save_digits_model(new_digits_model(0, hidden=8), tmp_path / "digits")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    a = ["--model-a", str(twin_folders / "a")]
    cases = [
        ([*a, "--model-b", str(tmp_path / "digits")], "new", "--model-b: .* is a digits model"),
        ([*a, "--model-b", str(tmp_path / "none")], "new", "--model-b .*: no config.json there"),
        ([*a, "--model-b", str(twin_folders / "b")], "full", "OUT .*: exists and is not an empty"),
    ]
    for args, out, says in cases:
        res = _pleas_cli(*args, "--data", "zoo_copy", str(tmp_path / out))
        assert res.exit_code == 2, res.output
        assert re.search(says, res.output), res.output
    assert not (tmp_path / "new").exists()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]


@torch.no_grad()
def _answer_loss(model, tok, tasks: list[str], per_task: int) -> float:
    from evomerge.zoo.evaluate import load_task_items, task_dir

    losses = []
    for task in tasks:
        for prompt, answer in load_task_items(task_dir(task))[:per_task]:
            p = tok.encode(prompt, add_special_tokens=False)
            a = tok.encode(answer + "\n", add_special_tokens=False)
            labels = torch.tensor([[-100] * len(p) + a])
            losses.append(model(input_ids=torch.tensor([p + a]), labels=labels).loss.item())
    return sum(losses) / len(losses)


def test_pleas_beats_plain_averaging_on_the_lm_seed_pair() -> None:
    """lm-seeds' two Llamas from different inits (quick zoo: briefly trained): plain averaging
    is worse than either source; PLeaS on their task data is not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.model_merges.lm_zoo import SEEDS_TASKS, task_texts
    from evomerge.zoo.build import build, load_manifest

    folder = build("lm-seeds", quick=True, progress=False)  # cached by config hash
    tasks = load_manifest(folder)["tasks"]
    a, b = (AutoModelForCausalLM.from_pretrained(folder / n).eval() for n in ("seed_0", "seed_1"))
    tok = AutoTokenizer.from_pretrained(folder / "seed_0")
    texts = task_texts(SEEDS_TASKS, 200)
    loss = {
        "a": _answer_loss(a, tok, tasks, 30),
        "b": _answer_loss(b, tok, tasks, 30),
        "average": _answer_loss(
            pleas_llama.merge_llama(a, b, [], tok, method="average")[0], tok, tasks, 30
        ),
        "pleas": _answer_loss(pleas_llama.merge_llama(a, b, texts, tok)[0], tok, tasks, 30),
    }
    assert loss["average"] > max(loss["a"], loss["b"]) + 0.2  # measured: 2.92 against 2.21
    assert loss["pleas"] < loss["average"] - 0.2  # measured: 2.16
