"""Twin-Merging as a transformers model: "Twin-Merging: Dynamic Integration of Modular Expertise
in Model Merging", Lu et al., NeurIPS 2024 (arXiv 2406.15479).

This file is saved beside the weights of every Twin-Merging folder (``auto_map`` in its
``config.json``), so ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``
and lm-eval's ``hf`` backend load it without evomerge installed. It imports only torch and
transformers.

The model holds the shared expert θ* (a static merge of the experts) as an ordinary Llama, and
for every expert t its exclusive knowledge v_t = θ_t − θ*, compressed by SVD to rank r
(v_t ≈ B_t A_t, B_t = U_r Σ_r, A_t = V_rᵀ) for every matrix; 1-D tensors (the RMSNorm weights)
are kept whole, since the SVD of a vector is the vector. For each input, the router reads the
shared model's representation of the input (its last hidden states, mean over the prompt's
tokens) and gives weights w = softmax(R(Emb(x))), and the input runs through
θ* + Σ_t w_t v_t (the paper's dynamic merge). The weighted sum is applied as low-rank terms in
each layer's forward ((W* + Σ_t w_t B_t A_t) x = W* x + Σ_t w_t B_t (A_t x)), which is the same
linear map as materialising the merged weights, but lets each row of a batch have its own
weights. During generation the weights are computed once, on the prompt (the first forward of
``generate``, with an empty cache), and kept for the tokens that follow, as the paper routes
once per input; a forward without a cache (``use_cache=False``, lm-eval's log-likelihoods)
routes on the whole sequence it is given.

Tied embeddings (``tie_word_embeddings: true``, e.g. SmolLM2): the embedding table is one
parameter of θ, used at the input and as the LM head, so θ(x) = θ* + Σ_t w_t v_t changes it in
both places alike: the head's exclusive factors are the embedding's (tied like the weights), and
a tied head computes x (E* + Σ_t w_t B_t A_t)ᵀ, the transpose of the embedding's lookup.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm


class TwinMergingConfig(LlamaConfig):
    """A Llama config plus ``twin_experts`` (names, in router order), ``twin_rank`` (the SVD
    rank r, capped per matrix at its smaller side) and ``twin_router_hidden``."""

    model_type = "twin_merging"


class _Route:
    """The merge weights of the current batch, [batch, experts], shared by every twin layer
    (None: the shared expert alone)."""

    weights: torch.Tensor | None = None


def _factor_rank(rank: int, rows: int, cols: int) -> int:
    return max(1, min(rank, rows, cols))


class TwinLinear(nn.Linear):
    """``nn.Linear`` holding θ*'s weight, plus each expert's exclusive part as B_t [out, r] and
    A_t [r, in]."""

    def __init__(self, inp: int, out: int, bias: bool, experts: int, rank: int, route: _Route):
        super().__init__(inp, out, bias=bias)
        r = _factor_rank(rank, out, inp)
        self.twin_b = nn.Parameter(torch.zeros(experts, out, r), requires_grad=False)
        self.twin_a = nn.Parameter(torch.zeros(experts, r, inp), requires_grad=False)
        self._route = route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        w = self._route.weights
        if w is None:
            return y
        z = torch.einsum("bli,tri->bltr", x, self.twin_a) * w.to(x.dtype)[:, None, :, None]
        return y + torch.einsum("bltr,tor->blo", z, self.twin_b)


class TwinEmbedding(nn.Embedding):
    """``nn.Embedding`` holding θ*'s table, plus each expert's exclusive part as B_t [vocab, r]
    and A_t [r, hidden]."""

    def __init__(self, vocab: int, hidden: int, padding_idx, experts: int, rank: int, route):
        super().__init__(vocab, hidden, padding_idx=padding_idx)
        r = _factor_rank(rank, vocab, hidden)
        self.twin_b = nn.Parameter(torch.zeros(experts, vocab, r), requires_grad=False)
        self.twin_a = nn.Parameter(torch.zeros(experts, r, hidden), requires_grad=False)
        self._route = route

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = super().forward(ids)
        w = self._route.weights
        if w is None:
            return y
        rows = self.twin_b[:, ids] * w.to(y.dtype).T[:, :, None, None]  # [t, b, l, r]
        return y + torch.einsum("tblr,trh->blh", rows, self.twin_a)


class TwinRMSNorm(LlamaRMSNorm):
    """Llama's RMSNorm with θ*'s weight, plus each expert's exclusive part whole ([experts, h])."""

    def __init__(self, hidden: int, eps: float, experts: int, route: _Route):
        super().__init__(hidden, eps=eps)
        self.twin_delta = nn.Parameter(torch.zeros(experts, hidden), requires_grad=False)
        self._route = route

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        w = self._route.weights
        if w is None:
            return super().forward(hidden_states)
        dtype = hidden_states.dtype
        h = hidden_states.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        weight = self.weight + w.to(self.weight.dtype) @ self.twin_delta  # [b, hidden]
        return weight[:, None, :] * h.to(dtype)


class TwinRouter(nn.Module):
    """The router of the authors' code (generative/router.py): three linear layers, the first
    two followed by batch norm, leaky ReLU and dropout 0.5; logits over the experts."""

    def __init__(self, inp: int, hidden: int, experts: int):
        super().__init__()
        self.fc1 = nn.Linear(inp, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.fc3 = nn.Linear(hidden, experts)
        self.dropout = nn.Dropout(p=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.leaky_relu(self.bn1(self.fc1(x))))
        x = self.dropout(F.leaky_relu(self.bn2(self.fc2(x))))
        return self.fc3(x)


def pooled(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the last hidden states over each row's real (unpadded) tokens: Emb(x)."""
    if attention_mask is None:
        return hidden.float().mean(1)
    m = attention_mask.to(torch.float32)[:, :, None]
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


class TwinMergingForCausalLM(LlamaForCausalLM):
    config_class = TwinMergingConfig
    # With ``tie_word_embeddings`` the head is the embedding matrix, and so is its exclusive
    # part: the head's B_t, A_t are the embedding's (one tensor each, saved once), so θ(x)'s
    # tied matrix gets the same w_t v_t at the input and at the head. Untied configs tie nothing
    # (transformers reads this mapping only when the config says tied).
    # (Set on the instance once the twin modules exist: Llama's own __init__ checks the
    # mapping against the plain modules it builds first.)
    _twin_tied_weights_keys = {
        "lm_head.weight": "model.embed_tokens.weight",
        "lm_head.twin_b": "model.embed_tokens.twin_b",
        "lm_head.twin_a": "model.embed_tokens.twin_a",
    }

    def __init__(self, config: TwinMergingConfig):
        super().__init__(config)
        n, rank = len(config.twin_experts), int(config.twin_rank)
        self._twin_route = _Route()
        self.forced_route: torch.Tensor | None = None  # [experts]: fixed weights, no router
        self._swap_modules(self, n, rank)
        self.router = TwinRouter(config.hidden_size, int(config.twin_router_hidden), n)
        self._tied_weights_keys = dict(self._twin_tied_weights_keys)
        self.post_init()

    def _swap_modules(self, root: nn.Module, n: int, rank: int) -> None:
        route = self._twin_route
        for name, child in list(root.named_children()):
            if isinstance(child, nn.Linear):
                new = TwinLinear(
                    child.in_features, child.out_features, child.bias is not None, n, rank, route
                )
            elif isinstance(child, nn.Embedding):
                new = TwinEmbedding(
                    child.num_embeddings, child.embedding_dim, child.padding_idx, n, rank, route
                )
            elif isinstance(child, LlamaRMSNorm):
                new = TwinRMSNorm(child.weight.shape[0], child.variance_epsilon, n, route)
            else:
                self._swap_modules(child, n, rank)
                continue
            setattr(root, name, new)

    @torch.no_grad()
    def shared_embedding(self, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """Emb(x): the shared expert θ*'s last hidden states, mean over each row's tokens."""
        self._twin_route.weights = None  # the shared expert alone reads the input
        out = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            use_cache=False,
        )
        return pooled(out.hidden_states[-1], attention_mask)

    @torch.no_grad()
    def route(self, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """Merge weights [batch, experts] for each row: softmax(R(Emb(x)))."""
        if self.forced_route is not None:
            w = self.forced_route.to(device=input_ids.device, dtype=torch.float32)
            return w.expand(input_ids.shape[0], -1)
        feats = self.shared_embedding(input_ids, attention_mask)
        return torch.softmax(self.router(feats).float(), dim=-1)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if input_ids is None:
            raise ValueError("Twin-Merging routes on input_ids; inputs_embeds is not supported")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or cache.get_seq_length() == 0:  # a new input, not a generation step
            self._twin_route.weights = self.route(input_ids, attention_mask)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
