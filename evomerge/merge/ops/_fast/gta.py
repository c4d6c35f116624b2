"""The fast path of generalized task arithmetic (evomerge/merge/ops/task_arithmetic.py): the same
steps and bits, by the cheapest route the tensors allow.

1. the fused C kernel (``gta_fused_path``): one pass over the inputs, for at most 4 models with
   no sparsification, top-k without rescale, or DARE;
2. block by block (``_streamed``), where the kernel is missing or declines but one global
   top-k rule per model makes blocks independent: a block's temporaries stay in cache;
3. the operator's own steps with its ``sparsify.Aids`` filled in: top-k rules, draws and L1
   norms in C, and on a search worker (``resident``: a ``resident_cache.TaskStats``) its
   cached sorted |τ|, DELLA ranks, uniforms, Σ|τ| and task vectors.

``out``, when given (the resident model's float32 parameter), receives the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from evomerge.merge.ops import sparsify
from evomerge.merge.ops._fast import fused_gta, mt_uniform
from evomerge.merge.ops._fast.gta_fused_path import fused_merge
from evomerge.merge.ops._fast.l1 import l1_norm
from evomerge.merge.ops._fast.top_k import sorted_abs, top_k_of, top_k_rules, top_k_sorted
from evomerge.merge.ops._registry import per_model
from evomerge.merge.ops.task_arithmetic import PRESETS, combine, sparsify_one

Run = Callable[[Callable[[], torch.Generator]], torch.Tensor]


def plan(
    name: str,
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    p: dict[str, Any],
    resident: Any,
    out: torch.Tensor | None,
) -> Run | None:
    """The preset ``name``'s fast run for these tensors, or None (nothing faster here)."""
    sp, consensus = PRESETS[name]
    if not tensors or base is None:
        return None
    if resident is None and out is None and not _streamable(tensors, base, sp, p):
        if fused_gta.library() is None:
            return None  # no kernel, no cache: the operator itself is the fastest
    return lambda make_generator: _merge(
        tensors, base, sp, consensus, p, resident, out, make_generator
    )


def _merge(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    sp: str | None,
    consensus: str | None,
    p: dict[str, Any],
    resident: Any,
    out: torch.Tensor | None,
    make_generator: Callable[[], torch.Generator],
) -> torch.Tensor:
    n = len(tensors)
    weights = per_model(p, "weight", n)
    # with a resident view the generator is made by the view, on a cache miss only
    stochastic = sp in ("random", "della_magprune") and resident is None
    generator = make_generator() if stochastic else None
    taus = None
    if sp is None and resident is not None:  # cached τ_i = θ_i − θ_base: no sub
        taus = [resident.task_vector(i, lambda t=t: t - base) for i, t in enumerate(tensors)]
    if _fusable(tensors, base, sp, p):
        flat = taus if taus is not None else tensors
        if fused_gta.usable(base, flat, out):
            fuse = (sp, consensus, p, resident, generator)
            return fused_merge(flat, base, weights, fuse, out, taus)
    w = [base.new_tensor(x) for x in weights]  # rounded as a stacked tensor is
    if _streamable(tensors, base, sp, p):
        return _streamed(tensors, base, w, sp, consensus, p, resident, out, taus)
    if taus is not None:
        return combine([torch.mul(x, wi) for x, wi in zip(taus, w)], w, base, consensus, p, out)
    weighted = [
        sparsify_one(d, sp, i, n, p, generator, _aids(d, i, resident, generator)).mul_(w[i])
        for i, d in ((i, t - base) for i, t in enumerate(tensors))
    ]
    return combine(weighted, w, base, consensus, p, out)


def _aids(delta: torch.Tensor, i: int, resident: Any, generator: Any) -> sparsify.Aids:
    """Model i's sparsifier aids: C draws and norms; a search worker's cached parts."""
    if resident is None:
        draw = lambda shape: mt_uniform.uniform(shape, generator)  # noqa: E731
        return sparsify.Aids(top_k=top_k_of, draw=draw, norm=l1_norm)
    return sparsify.Aids(
        top_k=lambda mag, k: top_k_sorted(
            resident.sorted_abs(i, lambda: sorted_abs(delta)), k, lambda: mag
        ),
        rank01=lambda: resident.rank01(i, lambda: sparsify.della_rank01(_rows(delta))),
        draw=resident.draw(generator),
        l1=lambda: resident.l1(i, lambda: l1_norm(delta)),
        norm=l1_norm,
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() >= 2 else t.unsqueeze(0)


# Elements per block of the streamed path: a block's temporaries (≈ 10 of 256 KiB) stay in
# cache, where the whole-tensor path streams ≈ 30 full-size temporaries through memory.
_BLOCK = 1 << 16


def _fusable(tensors: list[torch.Tensor], base: torch.Tensor, sp: str | None, p: dict) -> bool:
    """The fused kernel's cases: every step elementwise given per-model scalars (a top-k
    threshold, DARE's keep rate and L1 rescale factor), at most 4 models (``sum_in_order``'s
    in-order adds)."""
    return (
        (sp in (None, "random") or (sp == "magnitude" and not p.get("rescale", False)))
        and len(tensors) <= 4
        and all(t.shape == base.shape for t in tensors)
    )


def _streamable(tensors: list[torch.Tensor], base: torch.Tensor, sp: str | None, p: dict) -> bool:
    """Block by block gives the whole-tensor bits for magnitude (or no) sparsification without
    the L1 rescale (one global threshold per model)."""
    return _fusable(tensors, base, sp, p) and sp != "random" and base.numel() >= 4 * _BLOCK


def _streamed(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    w: list[torch.Tensor],
    sparsification: str | None,
    consensus: str | None,
    p: dict[str, Any],
    resident: Any = None,
    dst: torch.Tensor | None = None,
    taus: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The whole-tensor computation, block by block (each model's top-k threshold first);
    ``taus``: the cached task vectors (no sparsification)."""
    flat = [t.reshape(-1) for t in tensors]
    b = base.reshape(-1)
    cuts: list[sparsify.TopK | None] = [None] * len(flat)
    if sparsification == "magnitude":
        dens = per_model(p, "density", len(flat))
        cuts = top_k_rules(flat, b, dens, resident)
    result = torch.empty_like(base) if dst is None else dst
    out = result.view(-1)
    for s in range(0, b.numel(), _BLOCK):
        bs = b[s : s + _BLOCK]
        weighted = []
        for i, (t, cut, wi) in enumerate(zip(flat, cuts, w)):
            if taus is not None:
                weighted.append(taus[i].view(-1)[s : s + _BLOCK] * wi)
                continue
            d = t[s : s + _BLOCK] - bs
            if cut is not None:
                # as ``sparsify.magnitude``'s ``tensor * mask``
                d.mul_(cut.mask(d.abs(), s, torch.float32))
            weighted.append(d.mul_(wi))
        combine(weighted, w, bs, consensus, p, out=out[s : s + _BLOCK])
    return result
