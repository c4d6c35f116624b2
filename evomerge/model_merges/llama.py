"""PLeaS for Llama models (``LlamaForCausalLM``): two models of one shape trained from different
random inits, merged into one whose MLP is between one model's width (size 1) and both (2).

Nasery et al. 2025, "PLeaS: Merging Models with Permutations and Least Squares" (arXiv
2407.02447; code SewoongLab/PLeaS-Merging). ``pleas.py`` holds the method on a ReLU chain; this
file applies its steps to a Llama block. The authors' code has no transformer (their graph
compiler prints "MultiheadAttention is not supported!"; their experiments are ResNets), so the
choices below for the residual stream, the heads and RMSNorm are this file's, each written down.

Permutation groups, each matched by linear assignment on the negative Euclidean distance
between A's and B's per-token features (the authors' default similarity, ``pleas.similarity``):

- **residual stream**: one permutation shared by the embeddings, every layer's reads and writes,
  every norm's gain and the head; matched on the residual stream at every norm's input (before
  each attention, before each MLP, before the final norm), distances summed over those points
  (Git Re-Basin's rule for a group that several layers share). Kept at size 1: every channel is
  merged. Widening it would leave RMSNorm normalising over A's and B's kept channels together,
  which is neither model's norm; the authors' code widens every group of a ResNet, but a ResNet
  has no norm across the channels.
- **attention heads**, per layer: whole heads (rotary rotates dimension pairs at fixed
  frequencies inside a head, so a head's dimensions cannot be permuted, only heads), the query,
  key and value rows of a head and its columns of ``o_proj`` moving together; matched on the
  attention probabilities (what a head computes that does not depend on the basis inside the
  head, which two inits choose freely). Kept at size 1: the number of heads stays.
- **MLP units**, per layer: gate and up rows and down columns together; matched on the gate
  output, the up output and the product ``silu(gate)·up`` that ``down_proj`` reads (the group's
  three nodes, distances summed); partial: with keep fraction r = size − 1 the round(r·d) least
  similar pairs stay unmerged (``pleas.split_units``), so ``intermediate_size`` grows to (1+r)·d.

Merges (``method``):

- ``average``: plain weight averaging.
- ``permute``: the permutation merge of ``pleas.permute_merge`` on every weight, norm gains and
  embeddings included (W_M = R_A W_A U_A' + R_B W_B U_B'); at size 1 Git Re-Basin's merge.
- ``pleas``: every linear layer solves min_W ‖X_M W^T − T‖² (no bias: Llama has none), X_M the
  merged inputs and T the merged outputs of the source models' own features on the data, as in
  ``pleas.least_squares_merge``. Through RMSNorm: a norm's gain is a diagonal matrix in front of
  the linear layers that read it, so the layers after a norm (q/k/v after ``input_layernorm``,
  gate/up after ``post_attention_layernorm``, the head after the final norm) are fitted on the
  sources' unit-RMS residual (the norm's input divided by its RMS, before the gain), merged, and
  the merged model's norm gains are set to 1: the fitted weights carry them. Those inputs are
  the authors' rule (each layer's inputs are the sources' own, merged). Tried instead: the
  unit-RMS of the merged residual ½(h_A + P h_B) (what the merged model's norm would compute if
  its stream carried exactly that); on the first, 64-wide lm-seeds pair it raised PLeaS's
  answer loss (3.01 against 2.25, docs/pleas.md). The embeddings keep the permutation merge: least squares on one-hot
  inputs gives exactly that average for every token in the data (and zero for a token not in
  it, which the average does not lose). The head's target is the mean of the two models' logits (outputs are not permuted, as in ``pleas.py``).
  Step 4 in the authors' code is Adam on this objective; closed form is its minimum.

Not done: widening the residual stream or the heads (above); per-layer keep fractions (the paper's
QP over per-layer loss tables, given as no formula, as in ``pleas.py``); grouped-query attention
and tied embeddings are refused rather than handled.
"""

from __future__ import annotations

import copy

import torch

from evomerge.errors import UserInputError
from evomerge.model_merges import pleas
from evomerge.model_merges.llama_features import Features, collect, token_batches

ATTN = ("q_proj", "k_proj", "v_proj")
MLP_IN = ("gate_proj", "up_proj")
NORM_BEFORE = {n: "input_layernorm" for n in ATTN} | {n: "post_attention_layernorm" for n in MLP_IN}


def check_llama(model, label: str) -> None:
    """Refuse what this file does not handle, naming the model and the reason."""
    cfg = model.config
    problems = [
        (getattr(cfg, "model_type", None) != "llama", f"model_type is {cfg.model_type!r}"),
        (bool(cfg.tie_word_embeddings), "its embeddings are tied to the head"),
        (cfg.num_key_value_heads != cfg.num_attention_heads, "it uses grouped-query attention"),
        (
            bool(getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False)),
            "its projections have biases",
        ),
    ]
    for bad, why in problems:
        if bad:
            raise UserInputError(
                f"{label}: PLeaS for Llama merges untied, bias-free Llamas with one key/value "
                f"head per query head; {why}"
            )


def _same_shape(a, b) -> None:
    shapes_a = {k: v.shape for k, v in a.state_dict().items()}
    shapes_b = {k: v.shape for k, v in b.state_dict().items()}
    if shapes_a != shapes_b:
        raise UserInputError(
            "--model-b: PLeaS merges two models of one architecture; its tensor shapes differ "
            "from --model-a's"
        )


def _assign(s: torch.Tensor) -> torch.Tensor:
    """perm maximizing Σ_i s[i, perm[i]] (B's unit perm[i] goes with A's unit i)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(s.numpy(), maximize=True)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm


def _neg_dist(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """S[i, j] = −‖fa[:, i] − fb[:, j]‖ (features as columns)."""
    return -torch.cdist(fa.T.contiguous(), fb.T.contiguous())


def _matched(perm: torch.Tensor) -> pleas.Units:
    """Every unit merged: A's unit i with B's unit perm[i]."""
    i = torch.arange(len(perm))
    return pleas.Units(i, perm, i[:0], i[:0])


class Plan:
    """The units of every permutation group: ``resid``, ``heads[layer]`` (per dimension: a head's
    dimensions move with it), ``mlp[layer]`` and ``vocab`` (never permuted)."""

    def __init__(self, resid, heads, mlp, vocab) -> None:
        self.resid, self.heads, self.mlp, self.vocab = resid, heads, mlp, vocab

    def units(self, layer: int, name: str) -> tuple[pleas.Units, pleas.Units]:
        """(output units, input units) of a layer's linear ``name``."""
        if name in ATTN:
            return self.heads[layer], self.resid
        if name == "o_proj":
            return self.resid, self.heads[layer]
        if name in MLP_IN:
            return self.mlp[layer], self.resid
        return self.resid, self.mlp[layer]  # down_proj


def plan(fa: Features, fb: Features, config, size: float, method: str) -> Plan:
    """Match every group of B to A's on their features (identity for ``average``)."""
    keep = pleas.check_size(size)
    layers, hidden = config.num_hidden_layers, config.hidden_size
    heads, head_dim = config.num_attention_heads, hidden // config.num_attention_heads
    vocab = pleas.Units.identity(config.vocab_size)
    if method == "average":
        if keep:
            raise UserInputError("--size: plain averaging gives one model's width; use size 1")
        ident = pleas.Units.identity
        return Plan(
            ident(hidden),
            [ident(heads * head_dim)] * layers,
            [ident(config.intermediate_size)] * layers,
            vocab,
        )
    s_resid = sum(_neg_dist(fa.resid[k], fb.resid[k]) for k in fa.resid)
    resid = _matched(_assign(s_resid))
    head_units, mlp_units = [], []
    for i in range(layers):
        hp = _assign(_neg_dist(fa.attn[i].T, fb.attn[i].T))
        dims = (hp.unsqueeze(1) * head_dim + torch.arange(head_dim)).reshape(-1)
        head_units.append(_matched(dims))
        (_, gate_a), (_, gate_b) = fa.linear[(i, "gate_proj")], fb.linear[(i, "gate_proj")]
        (_, up_a), (_, up_b) = fa.linear[(i, "up_proj")], fb.linear[(i, "up_proj")]
        (act_a, _), (act_b, _) = fa.linear[(i, "down_proj")], fb.linear[(i, "down_proj")]
        s = _neg_dist(gate_a, gate_b) + _neg_dist(up_a, up_b) + _neg_dist(act_a, act_b)
        perm = _assign(s)
        mlp_units.append(pleas.split_units(perm, s, keep))
    return Plan(resid, head_units, mlp_units, vocab)


def _combine(wa, wb, out: pleas.Units, inp: pleas.Units) -> torch.Tensor:
    """W_M = R_A W_A U_A' + R_B W_B U_B' (``pleas.permute_merge`` for one weight)."""
    a = out.zip("a") @ wa.double() @ inp.unzip("a")
    return a + out.zip("b") @ wb.double() @ inp.unzip("b")


def _zipped(fa: torch.Tensor, fb: torch.Tensor, units: pleas.Units) -> torch.Tensor:
    """Merged features z_M = R_A z_A + R_B z_B, one row per token."""
    return fa @ units.zip("a").T + fb @ units.zip("b").T


def _fit(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """W [out, in] minimizing ‖x W^T − target‖² (minimum norm where x is rank-deficient)."""
    return torch.linalg.lstsq(x, target, driver="gelsd").solution.T


def merged_state(a, b, p: Plan, method: str, fa: Features | None, fb: Features | None) -> dict:
    """The merged model's tensors (float64), keyed as in ``a.state_dict()``."""
    sa, sb = a.state_dict(), b.state_dict()
    if method == "average":
        return {k: (sa[k].double() + sb[k].double()) / 2 for k in sa}
    out = {}
    emb = "model.embed_tokens.weight"
    out[emb] = _combine(sa[emb].T, sb[emb].T, p.resid, p.vocab).T
    for i in range(len(a.model.layers)):
        pre = f"model.layers.{i}."
        for name, (o_units, i_units) in ((n, p.units(i, n)) for n in _linear_names()):
            key = pre + _module(name) + f".{name}.weight"
            if method == "permute":
                out[key] = _combine(sa[key], sb[key], o_units, i_units)
                continue
            (xa, ya), (xb, yb) = fa.linear[(i, name)], fb.linear[(i, name)]
            if name in NORM_BEFORE:  # fit on the unit-RMS residual: the gain is folded in
                xa, xb = fa.norm[(i, NORM_BEFORE[name])], fb.norm[(i, NORM_BEFORE[name])]
            out[key] = _fit(_zipped(xa, xb, i_units), _zipped(ya, yb, o_units))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            key = pre + norm + ".weight"
            out[key] = _norm_gain(sa[key], sb[key], p.resid, method)
    final = "model.norm.weight"
    out[final] = _norm_gain(sa[final], sb[final], p.resid, method)
    head = "lm_head.weight"
    if method == "permute":
        out[head] = _combine(sa[head], sb[head], p.vocab, p.resid)
    else:
        x = _zipped(fa.norm[(-1, "norm")], fb.norm[(-1, "norm")], p.resid)
        out[head] = _fit(x, _zipped(fa.logits, fb.logits, p.vocab))
    return out


def _norm_gain(ga, gb, resid: pleas.Units, method: str) -> torch.Tensor:
    if method == "pleas":
        return torch.ones(resid.width, dtype=torch.float64)  # carried by the fitted weights
    return resid.zip("a") @ ga.double() + resid.zip("b") @ gb.double()


def _linear_names() -> tuple[str, ...]:
    return (*ATTN, "o_proj", *MLP_IN, "down_proj")


def _module(name: str) -> str:
    return "self_attn" if name in (*ATTN, "o_proj") else "mlp"


def merge_llama(a, b, texts: list[str], tokenizer, *, size: float = 1.0, method: str = "pleas"):
    """Merge two ``LlamaForCausalLM`` on ``texts`` (their features' data) into a new one whose
    ``intermediate_size`` is the merged MLP width. Returns ``(model, plan)``."""
    from transformers import LlamaForCausalLM

    if method not in pleas.METHODS:
        raise UserInputError(f"--method: {method!r} is unknown; valid: {', '.join(pleas.METHODS)}")
    pleas.check_size(size)
    check_llama(a, "--model-a")
    check_llama(b, "--model-b")
    _same_shape(a, b)
    fa = fb = None
    if method != "average":
        batches = token_batches(tokenizer, texts)
        fa, fb = collect(a, batches), collect(b, batches)
    p = plan(fa, fb, a.config, size, method)
    state = merged_state(a, b, p, method, fa, fb)
    cfg = copy.deepcopy(a.config)
    cfg.intermediate_size = p.mlp[0].width
    merged = LlamaForCausalLM(cfg).float().eval()
    merged.load_state_dict({k: v.float() for k, v in state.items()})
    return merged, p
