"""MC-SMoE's compressed experts, run in their factored form: Li et al., "Merge, Then Compress:
Demystify Efficient SMoE with Hints from Its Routing Policy", ICLR 2024 (arXiv:2310.01334).

This file is saved beside the weights of every factored MC-SMoE folder (``auto_map`` in its
``config.json``), so ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``
and lm-eval's ``hf`` backend load it without evomerge installed. It imports only torch and
transformers; evomerge loads the same class from its own copy and runs no code from a folder.

A Mixtral whose every expert matrix W [out, in] (w1/gate, w3/up, w2/down) is held as MC-SMoE
stores it, W = L R + S with S row-sparse: ``left`` L [out, r], ``right`` R [r, in], the kept
rows of S ``sparse_rows`` [k, in] and their row numbers ``sparse_index`` [k]. The product is
never formed: x -> (x Rᵀ) Lᵀ, plus x S_keptᵀ added to the kept output units. That is the same
linear map as the dense folder's x (L R + S)ᵀ (up to float rounding), at r (in + out) + k in
multiply-adds a token instead of out · in, and the same parameters held. The router, attention,
norms, embeddings and head are Mixtral's own.

``config.json`` says every matrix's k (``mc_smoe_kept_rows``: per layer, per expert, the kept
rows of [w1, w3, w2]) and the rank (``mc_smoe_rank``), so the model is built with the right
shapes before its weights are read.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import MixtralConfig, MixtralForCausalLM
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, MixtralTopKRouter

# the checkpoint's names of an expert's matrices, in the order the rows of the config list them
MATRIX_NAMES = ("w1", "w3", "w2")


class McSmoeFactoredConfig(MixtralConfig):
    """A Mixtral config plus ``mc_smoe_rank`` and ``mc_smoe_kept_rows`` [layer][expert][3]."""

    model_type = "mc_smoe_factored"


class FactoredLinear(nn.Module):
    """y = (x Rᵀ) Lᵀ, plus x S_keptᵀ on the kept output units; no bias (Mixtral's experts have
    none)."""

    def __init__(self, inp: int, out: int, rank: int, kept: int):
        super().__init__()
        self.out_features = out
        self.left = nn.Parameter(torch.empty(out, rank))
        self.right = nn.Parameter(torch.empty(rank, inp))
        self.sparse_rows = nn.Parameter(torch.empty(kept, inp))
        self.register_buffer("sparse_index", torch.zeros(kept, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(nn.functional.linear(x, self.right), self.left)
        if self.sparse_rows.shape[0]:
            rows = nn.functional.linear(x, self.sparse_rows)
            y = y.index_add(-1, self.sparse_index.long(), rows)
        return y


class FactoredExpert(nn.Module):
    """One SwiGLU expert, w2(silu(w1 x) * w3 x), each matrix factored."""

    def __init__(self, config, rank: int, kept: list[int]):
        super().__init__()
        h, inter = config.hidden_size, config.intermediate_size
        self.w1 = FactoredLinear(h, inter, rank, kept[0])
        self.w3 = FactoredLinear(h, inter, rank, kept[1])
        self.w2 = FactoredLinear(inter, h, rank, kept[2])
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class FactoredExperts(nn.ModuleList):
    """A layer's experts, called as Mixtral's fused experts are: each token goes through its
    top-k experts, weighted by the router (the same loop and order as ``MixtralExperts``)."""

    def forward(self, hidden_states, top_k_index, top_k_weights):
        final = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self):
            top_k_pos, token_idx = torch.where(top_k_index.T == e)
            if token_idx.numel() == 0:
                continue
            y = expert(hidden_states[token_idx]) * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, y.to(final.dtype))
        return final


class FactoredSparseMoeBlock(MixtralSparseMoeBlock):
    """Mixtral's MoE block (its router and forward) over factored experts."""

    def __init__(self, config, kept_rows: list[list[int]]):
        nn.Module.__init__(self)  # not Mixtral's: it would allocate the dense experts
        self.top_k = config.num_experts_per_tok
        self.jitter_noise = config.router_jitter_noise
        self.gate = MixtralTopKRouter(config)
        rank = int(config.mc_smoe_rank)
        self.experts = FactoredExperts([FactoredExpert(config, rank, k) for k in kept_rows])


class McSmoeFactoredForCausalLM(MixtralForCausalLM):
    config_class = McSmoeFactoredConfig

    def __init__(self, config: McSmoeFactoredConfig):
        super().__init__(config)
        kept = config.mc_smoe_kept_rows
        if len(kept) != config.num_hidden_layers or any(
            len(layer) != config.num_local_experts for layer in kept
        ):
            raise ValueError(
                "config.json mc_smoe_kept_rows: give one [w1, w3, w2] row count per expert "
                "(num_local_experts) per layer (num_hidden_layers)"
            )
        for layer, rows in zip(self.model.layers, kept):
            layer.mlp = FactoredSparseMoeBlock(config, rows)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, FactoredLinear):  # every one is read from the folder; zeros if not
            for tensor in (module.left, module.right, module.sparse_rows, module.sparse_index):
                init.zeros_(tensor)
