"""What a compressed MC-SMoE model stores, and what it costs.

A Mixtral folder has one dense [out, in] tensor per expert matrix, so the folder that
transformers loads holds the dense products L R + S (same size as the uncompressed merge).
The factored form, the one MC-SMoE's memory figure counts, is written beside it as
``FACTORS_FILE`` (safetensors): per layer, expert and matrix, L [out, r], R [r, in], the kept
rows of S [k, in] and their row indices [k] (int32). ``compression_report`` counts both forms'
parameters and bytes, and the multiply-accumulates a token costs in each.
"""

from __future__ import annotations

import torch

from evomerge.moe.compress import MATRICES, FactoredExperts
from evomerge.moe.compress_prune import RowPruner

FACTORS_FILE = "mc_smoe_factors.safetensors"


def factor_tensors(factored: list[FactoredExperts], pruner: RowPruner) -> dict[str, torch.Tensor]:
    """The factored form, one entry per layer, expert and matrix (checkpoint names w1/w3/w2)."""
    names = {"gate": "w1", "up": "w3", "down": "w2"}
    out: dict[str, torch.Tensor] = {}
    for i, f in enumerate(factored):
        for m in MATRICES:
            kept = pruner.kept[f"{i}.{m}"]  # [E, out]
            for e in range(f.left[m].shape[0]):
                key = f"layers.{i}.experts.{e}.{names[m]}"
                rows = kept[e].nonzero().flatten()
                out[f"{key}.left"] = f.left[m][e].detach().contiguous()
                out[f"{key}.right"] = f.right[m][e].detach().contiguous()
                out[f"{key}.sparse_rows"] = f.sparse[m][e][rows].detach().contiguous()
                out[f"{key}.sparse_index"] = rows.to(torch.int32)
    return out


def dense_from_factors(tensors: dict[str, torch.Tensor], key: str, out_dim: int) -> torch.Tensor:
    """One expert matrix rebuilt from ``FACTORS_FILE``'s tensors: L R plus the kept S rows."""
    w = tensors[f"{key}.left"] @ tensors[f"{key}.right"]
    rows = tensors[f"{key}.sparse_index"].long()
    assert w.shape[0] == out_dim
    w[rows] += tensors[f"{key}.sparse_rows"]
    return w


def linear_macs(cfg, expert_macs: float) -> float:
    """Multiply-accumulates of one token through every weight matrix of a Mixtral: attention's
    four projections, the router, ``top_k`` experts at ``expert_macs`` each, the LM head
    (attention scores, norms and activations left out: they do not change here)."""
    h, heads, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    router = h * cfg.num_local_experts
    per_layer = attention + router + cfg.num_experts_per_tok * expert_macs
    return cfg.num_hidden_layers * per_layer + h * cfg.vocab_size


def compression_report(model, original, factors: dict[str, torch.Tensor], nbytes: int) -> dict:
    """Parameters of the original, the dense folder and the factored form; the factored file's
    bytes; MACs a token costs in each (the factored expert's cost is the mean over experts)."""
    cfg = model.config
    h, inter = cfg.hidden_size, cfg.intermediate_size
    dense_params = sum(p.numel() for p in model.parameters())
    expert_params = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    stored = {k: v for k, v in factors.items() if not k.endswith(".sparse_index")}
    factored_params = dense_params - expert_params + sum(v.numel() for v in stored.values())
    index_entries = sum(v.numel() for k, v in factors.items() if k.endswith(".sparse_index"))
    n_experts = cfg.num_hidden_layers * cfg.num_local_experts
    mean_expert = sum(v.numel() for v in stored.values()) / n_experts  # weights touched per token
    return {
        "parameters": {
            "original": sum(p.numel() for p in original.parameters()),
            "dense_folder": dense_params,
            "factored": factored_params,
            "factored_row_indices": index_entries,
        },
        "factors_file_bytes": nbytes,
        "macs_per_token": {
            "original": linear_macs(original.config, 3 * h * original.config.intermediate_size),
            "dense_folder": linear_macs(cfg, 3 * h * inter),
            "factored": linear_macs(cfg, mean_expert),
        },
    }


def compress_reduced(small, original, tok, lines, opts) -> tuple[dict, bytes]:
    """MC-SMoE's compression of the merged model ``small`` in place (``original`` teaches):
    returns the report's ``compression`` section and ``FACTORS_FILE``'s bytes."""
    from safetensors.torch import save

    from evomerge.moe.compress_finetune import compress_and_finetune

    factored, pruner, log = compress_and_finetune(small, original, tok, lines, opts)
    factors = factor_tensors(factored, pruner)
    blob = save(factors)
    report = {
        **{k: getattr(opts, k) for k in ("rank", "sparsity", "steps", "lr", "batch", "seed")},
        "form": opts.form,
        "finetune_lines": len(lines),
        "sparse_entries_kept": round(pruner.kept_share(), 6),
        "training": log,
        **compression_report(small, original, factors, len(blob)),
    }
    return report, blob
