"""Twin-Merging (Lu et al. 2024, arXiv 2406.15479) on a tied-embedding Llama and on LoRA experts:
the folder keeps the tie and loads through transformers; a one-hot route at full rank is each
expert (full fine-tunes whose embedding, hence head, changed; and PEFT adapters, against peft's
own merge_and_unload); LoRA exclusive parts come from the adapters' factors, with no SVD of a
full matrix, and their truncation equals the full-matrix SVD's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.twin.build import SUMMARY
from tests.helpers.tied_models import make_tied_family
from tests.test_lora_inputs import make_adapter

PROMPTS = {"a": "zoo:zoo_cipher", "b": "zoo:zoo_shift_u"}
LORA_TARGETS = ["q_proj", "v_proj", "down_proj", "embed_tokens"]  # embedding: Aᵀ Bᵀ, tied head


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tied")
    fam = make_tied_family(root, n_experts=2, layers=2)
    fam["adapters"] = [
        _without_saved_embedding(
            make_adapter(fam["base"], root / f"lora{i}", 10 + i, r=2, target_modules=LORA_TARGETS)
        )
        for i in range(2)
    ]
    return fam


def _without_saved_embedding(folder: Path) -> str:
    """The adapter as ``save_pretrained(save_embedding_layers=False)`` writes it: peft otherwise
    also saves the whole embedding when LoRA targets it (which evomerge reads as a tensor the
    adapter replaces: not a product, so the full SVD)."""
    from safetensors.torch import load_file, save_file

    f = folder / "adapter_model.safetensors"
    save_file(
        {k: v for k, v in load_file(str(f)).items() if "embed_tokens.base_layer" not in k},
        str(f),
    )
    return str(folder)


def _build(root: Path, base: str, experts: list[str], rank: int, **extra) -> Path:
    cfg = {
        "base_model": base,
        "experts": {n: {"model": m, "prompts": PROMPTS[n]} for n, m in zip(PROMPTS, experts)},
        "rank": rank,
        "router": {"items": 8, "epochs": 3},
        **extra,
    }
    (root / "twin.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "twin"
    res = CliRunner().invoke(app, ["twin-merge", str(root / "twin.yaml"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _load(folder: Path | str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True).eval()


def _logits(model, route: torch.Tensor | None = None) -> torch.Tensor:
    ids = torch.arange(3, 3 + 2 * 12).reshape(2, 12)
    if route is not None:
        model.forced_route = route
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits
    finally:
        model.forced_route = None


@pytest.fixture(scope="module")
def tied_twin(family, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tied_twin")
    return _build(root, family["base"], family["experts"], rank=1000)


def test_tied_folder_keeps_the_tie_and_stores_the_matrix_once(tied_twin):
    cfg = json.loads((tied_twin / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True
    with safe_open(str(tied_twin / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.twin_b" in keys and not any(k.startswith("lm_head") for k in keys)
    model = _load(tied_twin)
    assert type(model).__name__ == "TwinMergingForCausalLM"
    emb, head = model.model.embed_tokens, model.lm_head
    assert head.weight is emb.weight and head.twin_b is emb.twin_b and head.twin_a is emb.twin_a
    assert json.loads((tied_twin / SUMMARY).read_text())["tied_embeddings"] is True


def test_tied_one_hot_route_at_full_rank_is_each_expert(family, tied_twin):
    """The experts changed their (tied) embedding: a one-hot route gives that expert's
    embedding at the input and as the head, so its logits, to float32 rounding."""
    from transformers import AutoModelForCausalLM

    model = _load(tied_twin)
    for i, path in enumerate(family["experts"]):
        expert = AutoModelForCausalLM.from_pretrained(path).eval()
        want = _logits(expert)
        got = _logits(model, torch.eye(2)[i])
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    shared_only = _logits(model, torch.zeros(2))
    assert not torch.allclose(shared_only, want, atol=1e-3)  # the exclusive part did something


@pytest.fixture(scope="module")
def lora_twin(family, tmp_path_factory, request) -> tuple[Path, dict]:
    """Two rank-2 adapters, rank 4 requested: each v_t = (1 − c) s B_t A_t − c s B_o A_o has
    rank ≤ 4, so the factors are exact."""
    import evomerge.twin.build as build

    def no_full_svd(*_a, **_k):
        raise AssertionError("a full-matrix SVD ran on a LoRA-targeted matrix")

    root = tmp_path_factory.mktemp("lora_twin")
    mp = pytest.MonkeyPatch()
    mp.setattr(build, "compress", no_full_svd)  # LoRA experts never reach the full SVD here
    try:
        out = _build(root, family["base"], family["adapters"], rank=4)
    finally:
        mp.undo()
    return out, json.loads((out / SUMMARY).read_text())


def test_lora_exclusive_parts_come_from_the_factors(lora_twin):
    _, summary = lora_twin
    assert summary["matrices_from_adapter_factors"] == 2 * 3 + 1  # 2 layers × 3, embedding
    assert summary["matrices_by_full_svd"] == 0
    assert all(v == pytest.approx(1.0) for v in summary["kept_energy"].values())


def test_lora_one_hot_route_is_the_merged_adapter(family, lora_twin, tmp_path):
    from tests.test_lora_inputs import merge_and_unload

    model = _load(lora_twin[0])
    for i, adapter in enumerate(family["adapters"]):
        merged = _load(merge_and_unload(family["base"], Path(adapter), tmp_path / f"m{i}"))
        torch.testing.assert_close(
            _logits(model, torch.eye(2)[i]), _logits(merged), atol=2e-5, rtol=0
        )


def test_truncated_factors_equal_the_full_matrix_svd():
    """Below the adapters' summed rank, the SVD of the k × k core gives the same best rank-r
    approximation as the SVD of the full exclusive matrix, and the same kept energy."""
    from evomerge.twin.exclusive import (
        adapter_span,
        compress,
        compress_core,
        kept_fraction,
        shared_core,
    )

    g = torch.Generator().manual_seed(0)
    fs = [
        (torch.randn(40, 3, generator=g).double(), torch.randn(3, 24, generator=g).double())
        for _ in range(2)
    ]
    shared_change = 0.3 * (fs[0][0] @ fs[0][1] + fs[1][0] @ fs[1][1])
    q_l, q_r = adapter_span(fs)
    core = (q_l.T @ fs[0][0]) @ (fs[0][1] @ q_r) - shared_core(shared_change, q_l, q_r)
    b, a, kept, total = compress_core(core, q_l, q_r, 2)
    full = fs[0][0] @ fs[0][1] - shared_change
    fb, fa = compress(full.float(), 2)
    torch.testing.assert_close(b @ a, fb @ fa, atol=1e-4, rtol=0)
    assert kept / total == pytest.approx(kept_fraction(full, 2), rel=1e-9)
    off_span = shared_change + torch.randn(40, 24, generator=g).double()
    assert shared_core(off_span, q_l, q_r) is None  # e.g. TIES: the full-matrix SVD instead


def test_lora_with_ties_shared_falls_back_to_the_full_svd(family, tmp_path):
    shared = {"merge_method": "ties", "parameters": {"weight": 0.5, "density": 0.5}}
    out = _build(tmp_path, family["base"], family["adapters"], rank=1000, shared=shared)
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["matrices_by_full_svd"] == 2 * 3 + 1
    assert summary["matrices_from_adapter_factors"] == 0


def test_tied_and_untied_experts_are_refused_in_one_line(family, tmp_path):
    cfg = {
        "base_model": family["base"],
        "experts": {
            "a": {"model": family["experts"][1], "prompts": PROMPTS["a"]},
            "b": {"model": family["untied"], "prompts": PROMPTS["b"]},
        },
    }
    (tmp_path / "twin.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(
        app, ["twin-merge", str(tmp_path / "twin.yaml"), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "experts.b.model" in lines[0] and "tie_word_embeddings" in lines[0]
