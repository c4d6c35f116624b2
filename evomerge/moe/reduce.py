"""Reduce a Mixtral-style model to ``keep`` experts per layer with one of the methods, and write
the result as an HF folder.

``reduced_model`` is the smaller model: ``num_local_experts = keep``, one merged expert and one
router row per group, everything else (attention, norms, embeddings, head) the original's.
``shared_model`` is the paper's form of MC-SMoE (same size as the original): every router row
kept, each original expert replaced by its group's merged expert.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from evomerge.errors import UserInputError
from evomerge.moe.experts import layer_experts, moe_blocks, router_weight
from evomerge.moe.group_average import average_layer
from evomerge.moe.grouping import check_keep
from evomerge.moe.mc_smoe import mc_smoe_layer
from evomerge.moe.merged_layer import MergedLayer
from evomerge.moe.routing_stats import LayerStats
from evomerge.moe.sub_moe import sub_moe_layer

REPORT_FILE = "moe_reduction.json"


def _mc_smoe(experts, router, stats, keep, *, seed, rank_fraction):
    return mc_smoe_layer(experts, router, stats, keep)  # deterministic: no seed, no rank


def _sub_moe(experts, router, stats, keep, *, seed, rank_fraction):
    return sub_moe_layer(experts, router, stats, keep, seed=seed, rank_fraction=rank_fraction)


def _average(experts, router, stats, keep, *, seed, rank_fraction):
    return average_layer(experts, router, stats, keep, seed=seed)


METHODS: dict[str, Callable[..., MergedLayer]] = {
    "mc-smoe": _mc_smoe,
    "sub-moe": _sub_moe,
    "average": _average,
}


def check_request(model, method: str, keep: int, rank_fraction: float = 1.0) -> None:
    """Refuse what cannot run, before any calibration pass: one line naming the option."""
    if method not in METHODS:
        raise UserInputError(f"--method {method!r} is unknown; valid: {', '.join(METHODS)}")
    if method != "sub-moe" and rank_fraction != 1.0:
        raise UserInputError(f"--rank-fraction applies to --method sub-moe only, not {method}")
    if not 0.0 < rank_fraction <= 1.0:
        raise UserInputError(f"--rank-fraction {rank_fraction}: give a number in (0, 1]")
    moe_blocks(model)  # a model that is not Mixtral-style fails here
    cfg = model.config
    check_keep(keep, cfg.num_local_experts, cfg.num_experts_per_tok)


def merge_layers(
    model,
    stats: list[LayerStats],
    method: str,
    keep: int,
    *,
    seed: int = 0,
    rank_fraction: float = 1.0,
) -> list[MergedLayer]:
    check_request(model, method, keep, rank_fraction)
    fn = METHODS[method]
    return [
        fn(layer_experts(b), router_weight(b), s, keep, seed=seed, rank_fraction=rank_fraction)
        for b, s in zip(moe_blocks(model), stats)
    ]


def _write_experts(block, layer: MergedLayer, slots: list[int] | None = None) -> None:
    """Write ``layer``'s merged experts into ``block``: expert g into slot g, or (``slots``,
    one group index per original expert) each original expert's slot gets its group's."""
    with torch.no_grad():
        owners = slots if slots is not None else list(range(len(layer.experts)))
        for slot, g in enumerate(owners):
            ex = layer.experts[g]
            gate_up = block.experts.gate_up_proj
            gate_up[slot].copy_(torch.cat([ex.gate, ex.up]).to(gate_up.dtype))
            block.experts.down_proj[slot].copy_(ex.down.to(block.experts.down_proj.dtype))


def reduced_model(model, layers: list[MergedLayer]):
    """A new, smaller model of the same class: ``len(groups)`` experts per layer."""
    keep = len(layers[0].groups)
    cfg = copy.deepcopy(model.config)
    cfg.num_local_experts = keep
    small = type(model)(cfg).to(next(model.parameters()).dtype)
    expert_keys = (".experts.", ".gate.weight")
    state = {k: v for k, v in model.state_dict().items() if not any(s in k for s in expert_keys)}
    missing, unexpected = small.load_state_dict(state, strict=False)
    assert not unexpected and all(any(s in k for s in expert_keys) for k in missing), missing
    for block, layer in zip(moe_blocks(small), layers):
        _write_experts(block, layer)
        with torch.no_grad():
            block.gate.weight.copy_(layer.router.to(block.gate.weight.dtype))
    return small.eval()


def shared_model(model, layers: list[MergedLayer]):
    """A copy of ``model`` whose every expert is its group's merged expert (router untouched)."""
    shared = copy.deepcopy(model)
    for block, layer in zip(moe_blocks(shared), layers):
        owner = {e: g for g, members in enumerate(layer.groups) for e in members}
        _write_experts(block, layer, [owner[e] for e in range(len(owner))])
    return shared.eval()


def reduction_report(method: str, keep: int, layers, stats, **options) -> dict:
    return {
        "method": method,
        "keep": keep,
        **options,
        "layers": [
            {
                "groups": layer.groups,
                "frequency": [round(float(f), 6) for f in s.frequency],
            }
            for layer, s in zip(layers, stats)
        ],
    }


def save_reduced(
    small,
    tokenizer,
    out: Path,
    report: dict | Callable[[Path], dict],
    overwrite: bool = False,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write the reduced model, its tokenizer, ``moe_reduction.json`` and any ``extra_files``
    (name -> bytes) to ``out`` (through a temporary sibling folder, moved into place when
    complete). ``report`` may be a function of the temporary folder, called once the weights
    are written (to record their size)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"OUT {out}: exists and is not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"OUT {out}: folder exists and is not empty; remove it or --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        small.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if callable(report):
            report = report(tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        for name, blob in (extra_files or {}).items():
            (tmp / name).write_bytes(blob)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_moe(folder: str):
    """The model and tokenizer of ``folder`` (float32, eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(folder) / "config.json").is_file():
        raise UserInputError(f"IN {folder}: no config.json; give a Mixtral model folder or zoo:")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(folder)
