"""Read and write the experts and routers of a Mixtral-style model (transformers 5's fused
layout: ``experts.gate_up_proj`` [E, 2I, H], ``experts.down_proj`` [E, H, I], ``gate.weight``
[E, H]).

An ``Expert`` is one SwiGLU expert as three matrices in PyTorch's (out, in) layout:
``down @ (silu(gate @ x) * (up @ x))``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from evomerge.errors import UserInputError


class Expert(NamedTuple):
    gate: torch.Tensor  # [I, H]
    up: torch.Tensor  # [I, H]
    down: torch.Tensor  # [H, I]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The expert's output on tokens ``x`` [T, H] (what Sub-MoE clusters on)."""
        act = torch.nn.functional.silu(x @ self.gate.T) * (x @ self.up.T)
        return act @ self.down.T


def moe_blocks(model) -> list:
    """The sparse MoE block of every decoder layer; a clear error for other models."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    blocks = [getattr(layer, "mlp", None) for layer in layers or []]
    if not blocks or not all(hasattr(b, "experts") and hasattr(b, "gate") for b in blocks):
        raise UserInputError(
            f"model type {model.config.model_type!r}: MoE reduction reads Mixtral-style models "
            "(every layer's mlp holds a router `gate` and fused `experts`); give a "
            "MixtralForCausalLM folder"
        )
    return blocks


def layer_experts(block) -> list[Expert]:
    """The experts of one MoE block, as copies (detached float32)."""
    gate_up = block.experts.gate_up_proj.detach().float()
    down = block.experts.down_proj.detach().float()
    inter = gate_up.shape[1] // 2
    return [
        Expert(gate_up[e, :inter].clone(), gate_up[e, inter:].clone(), down[e].clone())
        for e in range(gate_up.shape[0])
    ]


def router_weight(block) -> torch.Tensor:
    """The router's [E, H] weight (one row per expert: its logit is ``row @ x``)."""
    return block.gate.weight.detach().float().clone()
