"""Generalized task arithmetic through the fused C kernel (``fused_gta``): the per-model scalars
the kernel needs — top-k thresholds (TIES), DARE's uniforms, keep rates and L1 rescale
factors — computed exactly as the operator (evomerge/merge/ops/task_arithmetic.py) computes them, so
the bits are the same. The fast path (``gta.py``) calls ``fused_merge`` when the kernel serves
the tensors (``fused_gta.usable``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from evomerge.merge.ops import sparsify
from evomerge.merge.ops._fast import dare_l1, fused_gta, mt_uniform
from evomerge.merge.ops._fast.l1 import l1_from_bins
from evomerge.merge.ops._fast.packed_uniform import Packed
from evomerge.merge.ops._fast.top_k import top_k_rules
from evomerge.merge.ops._registry import per_model
from evomerge.merge.ops.task_arithmetic import combine


def fused_merge(
    sources: list[torch.Tensor],
    base: torch.Tensor,
    weights: list[float],
    fuse: tuple[str | None, str | None, dict[str, Any], Any, torch.Generator | None],
    dst: torch.Tensor | None,
    taus: list[torch.Tensor] | None,
) -> torch.Tensor:
    """The whole-tensor computation in one pass of the C kernel (``fused_gta``): same bits.
    The caller has checked ``fused_gta.usable`` (float32 CPU tensors)."""
    sparsification, consensus, p, resident, generator = fuse
    w = [np.float32(x) for x in weights]  # rounded as the eager path's float32 weights are
    b = base.reshape(-1)
    flat = [t.reshape(-1) for t in sources]
    thresholds: list[tuple[float, int] | None] = [None] * len(sources)
    dare: dict[str, Any] = {}
    if sparsification == "magnitude":
        dens = per_model(p, "density", len(sources))
        cuts = top_k_rules(flat, b, dens, resident, fused=True)
        # mergekit's tie order (an argsort) is no (value, split) rule: the kernel keeps
        # |τ| > v for those models, and the kept ties are patched afterwards (_patch_ties)
        thresholds = [None if c is None else _kernel_rule(c) for c in cuts]
    elif sparsification == "random":
        dare = _dare_rule(flat, b, tuple(base.shape), p, generator, resident)
    normalize = bool(p.get("normalize", False))
    divisor = 1.0
    if normalize and not consensus:
        total = w[0]  # as combine's sum_in_order: the weights' float32 sum in order, ~0 -> 1
        for x in w[1:]:
            total = total + x
        divisor = 1.0 if abs(total) < np.float32(1e-8) else float(total)
    result = torch.empty_like(base) if dst is None else dst
    fused_gta.run(
        b,
        flat,
        is_tau=taus is not None,
        thresholds=thresholds,
        weights=[float(x) for x in w],
        consensus=consensus,
        normalize=normalize,
        scalar_divisor=divisor,
        lam=float(p.get("lambda", 1.0)),
        out=result.view(-1),
        **dare,
    )
    if sparsification == "magnitude" and any(c is not None and c.ties is not None for c in cuts):
        fused_gta.finish()  # (a deferred kernel may still be writing the output)
        _patch_ties(result.view(-1), flat, b, weights, cuts, consensus, p)
    return result


def _kernel_rule(cut: sparsify.TopK) -> tuple[float, int]:
    v, split = cut.threshold()
    return (v, 0) if cut.ties is not None else (v, split)  # split 0: |τ| > v everywhere


def _patch_ties(
    out: torch.Tensor,
    flat: list[torch.Tensor],
    b: torch.Tensor,
    weights: list[float],
    cuts: list[Any],
    consensus: str | None,
    p: dict[str, Any],
) -> None:
    """Recompute, with the operator's elementwise arithmetic (``combine``), the outputs at
    the flat positions where some model keeps a tie by mergekit's argsort order: every other
    position's keep decisions are the kernel's, so these few overwrite it with the same bits
    the eager path gives there."""
    pos = torch.unique(torch.cat([c.ties for c in cuts if c is not None and c.ties is not None]))
    bp = b[pos]
    w = [b.new_tensor(x) for x in weights]  # rounded as the eager path's weights are
    weighted = []
    for t, cut, wi in zip(flat, cuts, w):
        d = t[pos] - bp
        if cut is not None:
            d.mul_(cut.mask_at(d.abs(), pos))
        weighted.append(d.mul_(wi))
    out[pos] = combine(weighted, w, bp, consensus, p)


def _dare_rule(
    flat: list[torch.Tensor],
    b: torch.Tensor,
    shape: tuple[int, ...],
    p: dict[str, Any],
    generator: torch.Generator | None,
    resident: Any,
) -> dict[str, Any]:
    """DARE's per-model keep rule (uniforms u, keep where u < density) and L1 rescale factor,
    drawn and computed as ``sparsify.random`` does: a model at density ≥ 1 draws nothing and
    keeps everything (u = 0 < 1), the others draw in model order. The uniforms are packed
    (``packed_uniform``): the same values, in 3 bytes."""
    dens = per_model(p, "density", len(flat))
    rescale = bool(p.get("rescale", False))
    draw = resident.draw(generator, packed=True) if resident is not None else None
    uniforms, rates, scales = [], [], []
    for i, (t, d) in enumerate(zip(flat, dens)):
        if d >= 1:
            uniforms.append(Packed.zeros(b.numel()))
            rates.append(1.0)
            scales.append(1.0)
            continue
        u = draw(shape) if draw else mt_uniform.uniform_packed(shape, generator)
        rate = float(np.float32(d))  # as sparsify's comparison with float32 probs
        uniforms.append(u)
        rates.append(rate)
        scales.append(_l1_rescale(t, b, u, rate, i, resident) if rescale else 1.0)
    return {"uniforms": uniforms, "keep_rates": rates, "scales": scales}


_TABLE_MIN = 1 << 14  # smaller tensors: the direct pass costs less than the table lookup


def _l1_rescale(
    t: torch.Tensor, b: torch.Tensor, u: Packed, rate: float, i: int, resident: Any
) -> float:
    """``sparsify._rescaled``'s factor Σ|τ| / Σ|kept τ| (1 when either is ~0), both exact."""
    if resident is None:  # merging to disk: both sums in one read
        whole, kept = fused_gta.l1_bins_both(t, b, u, rate)
        return _factor(l1_from_bins(whole), l1_from_bins(kept))
    whole = lambda: b.new_tensor(l1_from_bins(fused_gta.l1_bins(t, b)))  # noqa: E731
    before = resident.l1(i, whole)
    table = None
    if t.numel() >= _TABLE_MIN:  # a search: no pass per candidate
        make = lambda: dare_l1.build(t, b, u)  # noqa: E731
        table = resident.dare_table(i, make)
    if table is not None:
        members = lambda q, make: resident.dare_members(i, q, make)  # noqa: E731
        kept = dare_l1.kept_l1(table, t, b, u, rate, members)
    else:
        kept = l1_from_bins(fused_gta.l1_bins(t, b, u, rate))
    return _factor(float(before), kept)


def _factor(before: float, after: float) -> float:
    # float32 scalars, as sparsify._rescaled's 0-d tensors: the same comparisons and division
    before32, after32, eps = np.float32(before), np.float32(after), np.float32(sparsify.EPS)
    if before32 < eps or after32 < eps:
        return 1.0
    return float(before32 / after32)
