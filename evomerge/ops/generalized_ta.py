"""Generalized task arithmetic: sparsify × sign consensus × normalize (named presets such as
``ties`` and ``dare_ties`` are registered in gta_presets.py).

Papers: Task Arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", 2023);
TIES-Merging (Yadav et al., 2023); DARE (Yu et al., "Language Models are Super Mario", 2024);
Model Breadcrumbs (Davari & Belilovsky, 2024); DELLA-Merging (Deep et al., 2024).

Semantics follow mergekit 0.1.5 (not the papers' reference code): τ_i = θ_i − θ_base is
sparsified per model, multiplied by its weight, optionally masked by the elected sign
("sum" = sign of Σ w_i τ_i, as TIES; "count" = majority of signs), summed, divided by the
sum of the (masked) weights when ``normalize``, scaled by λ, and added to the base.
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.ops import exact_l1, fused_gta, sparsify
from evomerge.ops._registry import per_model
from evomerge.ops.gta_fused_path import fused_merge


def _sparsify(
    delta: torch.Tensor,
    method: str | None,
    i: int,
    p: dict[str, Any],
    n: int,
    generator: torch.Generator | None,
    resident: Any = None,
) -> torch.Tensor:
    """Model ``i``'s sparsified τ, masked in place (``delta`` is the caller's fresh τ);
    ``resident`` (a worker's ``TaskStats``) serves the parts that do not depend on the
    candidate (sorted |τ|, Σ|τ|, DELLA ranks, uniform draws): same bits."""
    if method is None:
        return delta
    density = per_model(p, "density", n)[i]
    rescale = bool(p.get("rescale", False))
    srt = rank = draw = l1 = None
    if resident is not None:
        srt = lambda: resident.sorted_abs(i, lambda: sparsify.sorted_abs(delta))  # noqa: E731
        rank = lambda: resident.rank01(i, lambda: sparsify.della_rank01(_rows(delta)))  # noqa: E731
        l1 = lambda: resident.l1(i, lambda: exact_l1.l1_norm(delta))  # noqa: E731
        draw = resident.draw(generator)
    if method == "magnitude":
        return sparsify.magnitude(delta, density, rescale, srt, inplace=True)
    if method == "random":
        return sparsify.random(delta, density, rescale, generator, draw, l1, inplace=True)
    if method == "magnitude_outliers":
        gamma = per_model(p, "gamma", n)[i]
        return sparsify.magnitude_outliers(delta, density, gamma, rescale, srt, inplace=True)
    eps = per_model(p, "epsilon", n)[i]
    return sparsify.della_magprune(
        delta, density, eps, rescale, generator, rank, draw, l1, inplace=True
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() >= 2 else t.unsqueeze(0)


def consensus_mask(weighted: torch.Tensor, method: str) -> torch.Tensor:
    """1 where a model's weighted delta agrees with the elected sign (ties at 0 count as +)."""
    sign = weighted.sign()
    if method == "sum":
        elected = (weighted.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1
    else:
        elected = (sign.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1
    return (sign == elected).to(weighted.dtype)


def general_task_arithmetic(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    sparsification: str | None,
    consensus: str | None,
    generator: torch.Generator | None,
    resident: Any = None,
    out: torch.Tensor | None = None,
    **p: Any,
) -> torch.Tensor:
    """``resident``: a worker's cached per-tensor stats (``evomerge.workers.resident_cache``);
    ``out``: a contiguous float32 tensor of the base's shape that receives the result (the
    resident model's parameter). Neither changes a bit of the result."""
    n = len(tensors)
    if n == 0:
        return base.clone()
    weights = per_model(p, "weight", n)
    taus = None
    if sparsification is None and resident is not None:  # cached τ_i = θ_i − θ_base: no sub
        taus = [resident.task_vector(i, lambda t=t: t - base) for i, t in enumerate(tensors)]
    if _fusable(tensors, base, sparsification, p):
        flat = taus if taus is not None else tensors
        if fused_gta.usable(base, flat, out):
            fuse = (sparsification, consensus, p, resident, generator)
            return fused_merge(flat, base, weights, fuse, out, taus)
    w = [base.new_tensor(x) for x in weights]  # rounded as a stacked tensor is
    if _streamable(tensors, base, sparsification, p):
        return _streamed(tensors, base, w, sparsification, consensus, p, resident, out, taus)
    if taus is not None:
        return _combine([torch.mul(x, wi) for x, wi in zip(taus, w)], w, base, consensus, p, out)
    # One owned buffer per model (w_i · sparsified τ_i), updated in place: no stacked copies.
    weighted = [
        _sparsify(t - base, sparsification, i, p, n, generator, resident).mul_(w[i])
        for i, t in enumerate(tensors)
    ]
    return _combine(weighted, w, base, consensus, p, out)


def _combine(
    weighted: list[torch.Tensor],
    w: list[torch.Tensor],
    base: torch.Tensor,
    consensus: str | None,
    p: dict[str, Any],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """base + λ · (consensus-masked) Σ weighted [/ Σ weights]; consumes ``weighted``."""
    normalize = bool(p.get("normalize", False))
    if consensus:
        mixed, divisor = _agreeing_sum(weighted, w, consensus, normalize)
    else:
        mixed = _sum(weighted, inplace=True)
        divisor = _sum(w) if normalize else None
        if divisor is not None and divisor.abs() < 1e-8:
            divisor = torch.ones_like(divisor)
    if normalize:
        mixed = mixed.div_(divisor)
    lam = float(p.get("lambda", 1.0))
    if lam != 1:
        mixed = mixed.mul_(lam)
    return torch.add(base, mixed, out=out)


# Elements per block of the streamed path: a block's temporaries (≈ 10 of 256 KiB) stay in
# cache, where the whole-tensor path streams ≈ 30 full-size temporaries through memory.
_BLOCK = 1 << 16


def _fusable(tensors: list[torch.Tensor], base: torch.Tensor, sp: str | None, p: dict) -> bool:
    """The fused kernel's cases: every step elementwise given per-model scalars (a top-k
    threshold, DARE's keep rate and L1 rescale factor), at most 4 models (``_sum``'s in-order
    adds)."""
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
        cuts = [_top_k_rule(t, b, d, i, resident) for i, (t, d) in enumerate(zip(flat, dens))]
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
        _combine(weighted, w, bs, consensus, p, out=out[s : s + _BLOCK])
    return result


def _top_k_rule(
    t: torch.Tensor, b: torch.Tensor, density: float, i: int, resident: Any, fused: bool = False
) -> sparsify.TopK | None:
    """``sparsify.magnitude``'s kept set of τ = t − b as a rule (None: keep everything).
    ``fused``: the caller checked ``fused_gta.usable`` for t and b."""
    n = b.numel()
    if density >= 1:
        return None
    if density <= 0:
        return sparsify.TopK(b.new_tensor(float("inf")), 0)  # keeps nothing
    k = max(1, int(density * n))
    if k >= n:
        return None
    if resident is None:
        if fused_gta.usable(b, [t], None):  # radix selection in C: the same rule, ~5× faster
            v, split = fused_gta.top_k_rule(t, b, k)
            if split >= n or v == 0:
                return sparsify.TopK(b.new_tensor(v), split, v)
            # ties straddle v > 0: mergekit's argsort order picks the kept ones
            return sparsify.argsort_ties((t - b).abs_(), k, b.new_tensor(v))
        return sparsify.top_k((t - b).abs_(), k)
    srt = resident.sorted_abs(i, lambda: sparsify.sorted_abs(t - b))
    locate = None
    if fused:  # ties at the threshold: found in one C read of t and b
        locate = lambda v, count, nth: fused_gta.nth_equal(t, b, v, count, nth)  # noqa: E731
    mag = lambda: (t - b).abs_()  # noqa: E731
    order = None
    if hasattr(resident, "descending_order"):  # mergekit's tie order, sorted once per expert
        order = lambda: resident.descending_order(i, lambda: _order32(mag()))  # noqa: E731
    return sparsify.top_k_sorted(srt, k, mag, locate, order)


def _sum(xs: list[torch.Tensor], inplace: bool = False) -> torch.Tensor:
    """Σ xs, with the bits of ``torch.stack(xs).sum(0)``: torch adds up to 4 rows in order and
    beyond that in a shape-dependent cascade, so only short lists skip the stacked copy.
    ``inplace``: accumulate into ``xs[0]`` (the caller is done with it)."""
    if len(xs) > 4:
        return torch.stack(xs).sum(dim=0)
    out = xs[0] if inplace else xs[0].clone()
    for x in xs[1:]:
        out.add_(x)
    return out


_ONE = torch.tensor(1.0)


def _weight_sum(ind: list[torch.Tensor], w: list[torch.Tensor]) -> torch.Tensor:
    """Σ ind_i · w_i for 0/1 indicators, as ``_sum`` adds them (ind · w is exact, so the
    fused ``add_(ind, alpha=w)`` gives the bits of adding the products); consumes ``ind``."""
    if len(ind) > 4:
        return _sum([x.mul_(wi) for x, wi in zip(ind, w)], inplace=True)
    out = ind[0].mul_(w[0])
    for x, wi in zip(ind[1:], w[1:]):
        out.add_(x, alpha=float(wi))
    return out


def _agreeing_sum(
    weighted: list[torch.Tensor], w: list[torch.Tensor], method: str, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Σ of the entries that agree with the elected sign, Σ of their models' weights), equal to
    the masked sums of ``consensus_mask``. Overwrites ``weighted``.

    Multiplying by the elected sign e = ±1 is exact, so agreeing entries are those positive
    after the flip: ``clamp(e·x, min=0)`` keeps them and zeroes the rest, their sum flipped back
    by e is the masked sum, and sign(kept) ∈ {0, 1} is the mask. (A sum of only zeros may come
    out +0 where the masked form gives −0; base + ±0 is the base either way.)"""
    votes = _sum(weighted) if method == "sum" else _sum([x.sign() for x in weighted], True)
    # e = +1 where votes ≥ 0, else −1, in one pass: copysign gives −1 only for −0 beyond that,
    # and votes = −0 only when every entry is ±0, where either e keeps nothing
    elected = torch.copysign(_ONE, votes, out=votes)
    kept = [x.mul_(elected).clamp_(min=0) for x in weighted]
    mixed = _sum(kept, inplace=not normalize).mul_(elected)  # kept is needed for the divisor
    if not normalize:
        return mixed, None
    divisor = _weight_sum([k.sign_() for k in kept], w)
    return mixed, divisor.add_(torch.eq(divisor, 0, out=torch.empty_like(divisor)))  # 0 -> 1


def _order32(mag: torch.Tensor) -> torch.Tensor:
    """``sparsify.descending_order`` kept as int32: half the cache's bytes (n < 2**31)."""
    return sparsify.descending_order(mag).to(torch.int32)
