"""Experts whose tokenizers differ (added tokens, other vocabulary sizes) merge as mergekit 0.1.5
merges them: ``tokenizer_source: base | union | <model>`` and the ``tokenizer:`` block give the
same tensors (1e-5) and the same vocabulary as mergekit's own output, on the lm-skills zoo
(untied head) and on SmolLM2-135M (tied embeddings, a real BPE tokenizer), by ``evomerge
merge`` and in place (the search's materializer); without the key a mismatch is one line
naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.errors import UserInputError
from evomerge.merge.engine import run_merge
from evomerge.recipe_mergekit import from_mergekit_yaml, load_config

pytest.importorskip("mergekit")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"}
MK_DRIVER = """
import json, sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
for cfg, out in json.loads(sys.argv[1]):
    conf = MergeConfiguration.model_validate(yaml.safe_load(open(cfg)))
    run_merge(conf, out, MergeOptions(write_model_card=False, lazy_unpickle=False))
"""

TIES = "merge_method: ties\nbase_model: B\nmodels:\n" + "".join(
    f"  - {{model: {m}, parameters: {{weight: {w}, density: {d}}}}}\n"
    for m, w, d in (("E1", 0.6, 0.5), ("E2", 0.4, 0.7), ("E3", 0.3, 0.6))
)
LINEAR = "merge_method: linear\nbase_model: B\nmodels:\n" + "".join(
    f"  - {{model: {m}, parameters: {{weight: {w}}}}}\n"
    for m, w in (("B", 0.2), ("E1", 0.5), ("E2", 0.3), ("E3", 0.4))
)
BLOCK = """tokenizer:
  source: union
  pad_to_multiple_of: 8
  tokens:
    <a2>: {source: E2, force: true}
    <new>: {source: {kind: model_token, model: E1, token: '<a1>'}}
    <b1>: {source: {kind: zero}, force: true}
"""
SKILLS = {
    "ties_base": TIES + "tokenizer_source: base\n",
    "ties_union": TIES + "tokenizer_source: union\n",
    "ties_model": TIES + "tokenizer_source: E2\n",
    "linear_base": LINEAR + "tokenizer_source: base\n",
    "linear_union": LINEAR + "tokenizer_source: union\n",
    "linear_model": LINEAR + "tokenizer_source: E1\n",
    "linear_block": LINEAR + BLOCK,
}
# SmolLM2's weights are dequantized Q4_1 plus noise: many |tau| values are equal at any TIES
# top-k threshold, where mergekit's argsort leaves the order among equal magnitudes unspecified.
# Its TIES merges keep every value (density 1): sign election and weights still apply.
TIES_SMOL = "merge_method: ties\nbase_model: B\nmodels:\n" + "".join(
    f"  - {{model: {m}, parameters: {{weight: {w}, density: 1.0}}}}\n"
    for m, w in (("E1", 0.6), ("E2", 0.4), ("E3", 0.3))
)
SMOL = {  # E1: 3 added tokens; E2, E3: fine-tuned, same vocabulary as B
    "smol_ties_union": TIES_SMOL + "tokenizer_source: union\n",
    "smol_linear_base": LINEAR + "tokenizer_source: base\n",
    "smol_ties_model": TIES_SMOL + "tokenizer_source: E1\n",
}


# ---- expert families ----------------------------------------------------------------------------
def _perturb(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A fine-tune-like change of every tensor (small, seeded)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: (v + 0.01 * torch.randn(v.shape, generator=g)).contiguous() for k, v in tensors.items()
    }


def _save(out: Path, tensors: dict, config: dict, tok, added: list[str], seed: int) -> str:
    """``tensors`` with ``added`` tokens (new embedding / head rows: mean + noise) and a
    fine-tune-like perturbation, as a float32 HF folder."""
    out.mkdir(parents=True)
    tensors = dict(tensors)
    if added:
        tok.add_tokens(added)
        g = torch.Generator().manual_seed(seed + 100)
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            if k in tensors:
                t = tensors[k]
                new = t.mean(0) + 0.02 * torch.randn(len(added), t.shape[1], generator=g)
                tensors[k] = torch.cat([t, new])
    save_file(_perturb(tensors, seed), str(out / "model.safetensors"), {"format": "pt"})
    (out / "config.json").write_text(json.dumps({**config, "vocab_size": len(tok)}))
    tok.save_pretrained(str(out))
    return str(out)


def _family(root: Path, src: dict[str, Path | tuple], plan: dict[str, tuple]) -> dict[str, str]:
    from transformers import AutoTokenizer

    out = {}
    for key, (name, added, seed) in plan.items():
        folder = src[name]
        tok = AutoTokenizer.from_pretrained(folder)
        tensors = load_file(str(folder / "model.safetensors"))
        config = json.loads((folder / "config.json").read_text())
        out[key] = _save(root / key, tensors, config, tok, added, seed)
    return out


@pytest.fixture(scope="module")
def skills(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """lm-skills experts (untied head): E1 and E2 add tokens (one shared, at other ids)."""
    from evomerge.config import resolve_model_ref

    src = {
        m: Path(resolve_model_ref(f"zoo:lm-skills/{m}"))
        for m in ("base", "cipher", "shift", "sort")
    }
    plan = {
        "B": ("base", [], 1),
        "E1": ("cipher", ["<a1>", "<a2>"], 2),
        "E2": ("shift", ["<a2>", "<b1>"], 3),
        "E3": ("sort", [], 4),
    }
    return _family(tmp_path_factory.mktemp("skills"), src, plan)


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """SmolLM2-135M-Instruct (zoo:smollm2/instruct, float32), its first
    two layers: tied embeddings (no lm_head tensor), a 49152-token BPE tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.real_models import smollm2_dir

    folder = smollm2_dir()  # the zoo's SmolLM2 (converted from the GGUF once per cache)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    keep = ("model.layers.0.", "model.layers.1.", "model.embed_tokens.", "model.norm.")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith(keep)}
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.update(num_hidden_layers=2, dtype="float32", architectures=["LlamaForCausalLM"])
    config.pop("layer_types", None)
    del model
    root = tmp_path_factory.mktemp("smol")
    (root / "src").mkdir()
    save_file(tensors, str(root / "src" / "model.safetensors"))
    (root / "src" / "config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(folder).save_pretrained(str(root / "src"))
    plan = {
        "B": ("src", [], 11),
        "E1": ("src", ["<tool>", "<think>", "<answer>"], 12),
        "E2": ("src", [], 13),
        "E3": ("src", [], 14),
    }
    return _family(root, {"src": root / "src"}, plan)


# ---- merges -----------------------------------------------------------------------------------------
def _yaml(text: str, fam: dict[str, str]) -> str:
    for key in sorted(fam, key=len, reverse=True):
        text = text.replace(f"model: {key}", f"model: {fam[key]}")
        text = text.replace(f"base_model: {key}", f"base_model: {fam[key]}")
        text = text.replace(f"tokenizer_source: {key}", f"tokenizer_source: {fam[key]}")
        text = text.replace(f"source: {key},", f"source: {fam[key]},")
    return text + "dtype: float32\n"


@pytest.fixture(scope="module")
def merged(skills, smol, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Every config merged by evomerge and by mergekit (one subprocess for all)."""
    root = tmp_path_factory.mktemp("tok_merges")
    jobs, out = [], {}
    for name, text in [
        *((n, _yaml(t, skills)) for n, t in SKILLS.items()),
        *((n, _yaml(t, smol)) for n, t in SMOL.items()),
    ]:
        path = root / f"{name}.yaml"
        path.write_text(text)
        run_merge(load_config(path), root / f"em_{name}")
        jobs.append((str(path), str(root / f"mk_{name}")))
        out[name] = (root / f"em_{name}", root / f"mk_{name}")
    proc = subprocess.run(
        [sys.executable, "-c", MK_DRIVER, json.dumps(jobs)], env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _vocab(folder: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).get_vocab()


def _by_token(t: torch.Tensor, vocab: dict[str, int], order: list[str]) -> torch.Tensor:
    """Rows in ``order`` of tokens, then the padding rows."""
    rows = t[torch.tensor([vocab[tok] for tok in order])]
    return torch.cat([rows, t[len(vocab) :]])


@pytest.mark.parametrize("name", [*SKILLS, *SMOL])
def test_same_merge_as_mergekit(merged: dict, name: str) -> None:
    em_dir, mk_dir = merged[name]
    em, mk = (
        load_file(str(em_dir / "model.safetensors")),
        load_file(str(mk_dir / "model.safetensors")),
    )
    v_em, v_mk = _vocab(em_dir), _vocab(mk_dir)
    assert set(v_em) == set(v_mk)
    if "union" not in (SKILLS | SMOL)[name]:  # (mergekit orders several models' new tokens
        # as a hash set does: only the set is the same)
        assert v_em == v_mk
    assert set(em) == set(mk)
    order = sorted(v_mk, key=v_mk.get)
    for k in mk:
        a, b = em[k], mk[k].float()
        if "embed_tokens" in k or "lm_head" in k:
            a, b = _by_token(a, v_em, order), _by_token(b, v_mk, order)
        assert a.shape == b.shape, k
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=k)
    cfg = json.loads((em_dir / "config.json").read_text())
    assert cfg["vocab_size"] == em["model.embed_tokens.weight"].shape[0]
    assert cfg["vocab_size"] == json.loads((mk_dir / "config.json").read_text())["vocab_size"]


def test_union_order_and_rows(merged: dict, skills: dict) -> None:
    """Union: the base's tokens, then E1's new ones, then E2's; a token only E1 has keeps E1's
    row; the block's padding rows are the mean row (not a vacuous parity)."""
    em_dir, _ = merged["ties_union"]
    v = _vocab(em_dir)
    assert sorted(v, key=v.get)[-3:] == ["<a1>", "<a2>", "<b1>"]
    assert json.loads((em_dir / "config.json").read_text())["vocab_size"] == 77
    em_dir, _ = merged["linear_block"]
    t = load_file(str(em_dir / "model.safetensors"))["model.embed_tokens.weight"]
    assert t.shape[0] == 80 and len(_vocab(em_dir)) == 78
    torch.testing.assert_close(t[78], t[:78].mean(0))
    assert t[_vocab(em_dir)["<b1>"]].abs().max() == 0  # forced zero row


def test_tied_models_have_no_head(merged: dict) -> None:
    for name in SMOL:
        em_dir, _ = merged[name]
        assert "lm_head.weight" not in load_file(str(em_dir / "model.safetensors"))
        cfg = json.loads((em_dir / "config.json").read_text())
        assert cfg["tie_word_embeddings"] is True
    assert (
        json.loads((merged["smol_ties_model"][0] / "config.json").read_text())["vocab_size"]
        == 49155
    )


def test_mismatch_without_key_is_one_line(skills: dict, tmp_path: Path) -> None:
    recipe = from_mergekit_yaml(_yaml(TIES, skills))
    with pytest.raises(UserInputError) as err:
        run_merge(recipe, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "tokenizer_source" in msg and "union" in msg and "token rows" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "family,name",
    [("skills", "ties_union"), ("smol", "smol_ties_union")],
)
def test_in_place_equals_disk_merge(merged, family, name, request) -> None:
    """The search's resident model is built at the merged vocabulary size and its tensors are
    the disk merge's; a second candidate of the same vocabulary reuses it."""
    from evomerge.workers.materialize import ExpertCache, Materializer

    fam = request.getfixturevalue(family)
    recipe = from_mergekit_yaml(_yaml((SKILLS | SMOL)[name], fam))
    mat = Materializer(ExpertCache(stats=True))
    model = mat.materialize(recipe)
    em = load_file(str(merged[name][0] / "model.safetensors"))
    state = model.state_dict()
    assert model.config.vocab_size == em["model.embed_tokens.weight"].shape[0]
    for k, v in em.items():
        torch.testing.assert_close(state[k], v, atol=1e-6, rtol=0, msg=k)
    other = from_mergekit_yaml(_yaml((SKILLS | SMOL)[name].replace("0.6", "0.9"), fam))
    assert mat.materialize(other) is model
    state = mat.materialize(recipe).state_dict()  # (realigned rows from the resident cache)
    for k, v in em.items():
        torch.testing.assert_close(state[k], v, atol=1e-6, rtol=0, msg=k)


def test_space_carries_tokenizer_source(skills: dict) -> None:
    from evomerge.spaces import ParameterSpaceConfig, build_space

    models = [skills["E1"], skills["E2"]]
    for value, want in (("union", "union"), (1, skills["E2"])):
        cfg = ParameterSpaceConfig(merge_method="ties", tokenizer_source=value)
        space = build_space(cfg, base=skills["B"], models=models, num_layers=4)
        recipe = space.decode(space.x0())
        assert recipe.tokenizer_source == want
    with pytest.raises(UserInputError, match="space.tokenizer_source"):
        build_space(
            ParameterSpaceConfig(tokenizer_source=5), base=skills["B"], models=models, num_layers=4
        )


SCORE_PY = """\
import torch


def score(model, tokenizer):
    # the candidate is scored at the merged vocabulary, with the merged tokenizer
    rows = model.get_input_embeddings().weight.shape[0]
    assert len(tokenizer) == rows == model.config.vocab_size, (len(tokenizer), rows)
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(["a", "<a1>", "b", "<b1>", "c"])])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    return float(torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).mean())
"""


def test_search_over_experts_with_other_vocabularies(skills: dict, tmp_path: Path) -> None:
    """A parameter-space search whose experts added different tokens runs in place: every
    candidate is built at the union's size and scored with the union tokenizer."""
    from evomerge.config import load_experiment
    from evomerge.session import open_search
    from evomerge.store import RunStore

    (tmp_path / "score.py").write_text(SCORE_PY)
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        f"name: vocab\nmodels: [{skills['E1']}, {skills['E2']}]\nbase_model: {skills['B']}\n"
        "space: {kind: parameter, merge_method: ties, params: [weight], tokenizer_source: union}\n"
        "fitness: {python: score.py:score}\ndriver: {name: random, options: {batch_size: 3}}\n"
        "budget: {max_evals: 3}\nseed: 0\narchive: {top_k: 1}\n"
    )
    open_search(load_experiment(exp), tmp_path / "run").run()
    trials = RunStore.open(tmp_path / "run").trials()
    assert len(trials) == 3 and all(t.status == "OK" for t in trials), [t.error for t in trials]
    assert "tokenizer_source: union" in trials[0].recipe_yaml
