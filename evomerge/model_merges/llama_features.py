"""What PLeaS reads of a Llama on data: every linear layer's input and output, each RMSNorm's
input made unit-RMS (before its gain), and each layer's attention probabilities.

One row per token. Sequences are run in batches of equal token length, so there is no padding
to mask out: every row is a real token. The model runs in float64 (a copy) so that the least
squares that follow see the features at full precision.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence

import torch

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")


def unit_rms(h: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without its gain: what a norm's gain multiplies (``LlamaRMSNorm.forward``)."""
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def token_batches(tokenizer, texts: Sequence[str]) -> list[torch.Tensor]:
    """Token ids grouped by length: one ``[n, length]`` tensor per length, no padding."""
    by_len: dict[int, list[list[int]]] = defaultdict(list)
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        by_len[len(ids)].append(ids)
    return [torch.tensor(rows) for _, rows in sorted(by_len.items())]


class Features:
    """Per-token features of one model, each ``[tokens, width]`` float64.

    ``linear[(layer, name)] = (input, output)``; ``norm[(layer, name)]`` the unit-RMS input of
    a layer's norm (``layer = -1``, ``name = "norm"``: the final norm); ``resid`` every residual
    stream point (each norm's raw input); ``attn[layer]`` ``[heads, n_probabilities]``;
    ``logits`` ``[tokens, vocab]``."""

    def __init__(self) -> None:
        self.linear: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.norm: dict[tuple[int, str], torch.Tensor] = {}
        self.resid: dict[tuple[int, str], torch.Tensor] = {}
        self.attn: dict[int, torch.Tensor] = {}
        self.logits: torch.Tensor = torch.empty(0)


@torch.no_grad()
def collect(model, batches: list[torch.Tensor]) -> Features:
    """Run ``model`` (unchanged: a float64 copy runs) on ``batches`` and gather its features."""
    m = copy.deepcopy(model).double().eval()
    m.set_attn_implementation("eager")  # attention probabilities are read off the eager path
    eps = m.config.rms_norm_eps
    parts: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    hooks = []

    def keep(key, fn):
        return lambda _mod, args, out: parts[key].append(fn(args, out))

    for i, layer in enumerate(m.model.layers):
        for name in LINEARS:
            mod = getattr(layer.self_attn, name, None) or getattr(layer.mlp, name)
            hooks.append(mod.register_forward_hook(keep(("in", i, name), _first_input)))
            hooks.append(mod.register_forward_hook(keep(("out", i, name), lambda _, y: y)))
        for name in NORMS:
            hooks.append(
                getattr(layer, name).register_forward_hook(keep(("norm", i, name), _first_input))
            )
        attn = layer.self_attn
        hooks.append(attn.register_forward_hook(keep(("attn", i), lambda _, out: out[1])))  # probs
    hooks.append(m.model.norm.register_forward_hook(keep(("norm", -1, "norm"), _first_input)))
    logits = []
    try:
        for ids in batches:
            logits.append(m(input_ids=ids, output_attentions=True).logits)
    finally:
        for h in hooks:
            h.remove()
    feats = Features()
    rows_of = {k: v for k, v in parts.items() if k[0] != "attn"}
    flat = {k: torch.cat([t.reshape(-1, t.shape[-1]) for t in v]) for k, v in rows_of.items()}
    for key, rows in flat.items():
        if key[0] == "in":
            feats.linear[key[1:]] = (rows, flat[("out", *key[1:])])
        elif key[0] == "norm":
            feats.resid[key[1:]] = rows
            feats.norm[key[1:]] = unit_rms(rows, eps)
    for i in range(len(m.model.layers)):  # [batch, heads, q, k] -> [heads, everything else]
        probs = parts[("attn", i)]
        feats.attn[i] = torch.cat([p.transpose(0, 1).reshape(p.shape[1], -1) for p in probs], 1)
    feats.logits = torch.cat([t.reshape(-1, t.shape[-1]) for t in logits])
    return feats


def _first_input(args: tuple, _out: torch.Tensor) -> torch.Tensor:
    return args[0]
