"""Generalized task arithmetic and its named presets (mergekit 0.1.5's names, parameters and
defaults): task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs(_ties), della(_linear).

Papers: Task Arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", 2023);
TIES-Merging (Yadav et al., 2023); DARE (Yu et al., "Language Models are Super Mario", 2024);
Model Breadcrumbs (Davari & Belilovsky, 2024); DELLA-Merging (Deep et al., 2024).

The steps, as mergekit 0.1.5 takes them (not the papers' reference code):

1. task vectors τ_i = θ_i − θ_base;
2. sparsify each τ_i (sparsify.py: top-k magnitude, DARE's random drop, Breadcrumbs' outlier
   cut, DELLA's magnitude-ranked drop), optionally L1-rescaled;
3. weight: w_i · τ_i;
4. sign consensus (TIES): keep the entries that agree with the elected sign ("sum" = sign of
   Σ w_i τ_i; "count" = majority of signs);
5. sum, divided by the sum of the (kept) weights when ``normalize``, scaled by λ;
6. add to the base.

This file is the reference: the engine may run a faster path for the same bits
(``evomerge.merge.ops._fast``), and tests prove the two equal.
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.merge.ops import sparsify
from evomerge.merge.ops._registry import per_model, register_op

# preset name -> (sparsification, consensus): what the fast path needs to know of a preset
PRESETS: dict[str, tuple[str | None, str | None]] = {}


def general_task_arithmetic(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    sparsification: str | None,
    consensus: str | None,
    generator: torch.Generator | None,
    **p: Any,
) -> torch.Tensor:
    """Steps 1–6 above."""
    n = len(tensors)
    if n == 0:
        return base.clone()
    w = [base.new_tensor(x) for x in per_model(p, "weight", n)]  # rounded as a stacked tensor is
    # One owned buffer per model (w_i · sparsified τ_i), updated in place: no stacked copies.
    weighted = [
        sparsify_one(t - base, sparsification, i, n, p, generator).mul_(w[i])
        for i, t in enumerate(tensors)
    ]
    return combine(weighted, w, base, consensus, p)


def sparsify_one(
    delta: torch.Tensor,
    method: str | None,
    i: int,
    n: int,
    p: dict[str, Any],
    generator: torch.Generator | None,
    aids: sparsify.Aids = sparsify.EAGER,
) -> torch.Tensor:
    """Step 2 for model ``i`` of ``n``: its sparsified τ, masked in place (``delta`` is the
    caller's fresh τ). ``aids``: providers of parts of it with the same bits (cached or faster
    ones: the fast path's); the default computes everything here."""
    if method is None:
        return delta
    density = per_model(p, "density", n)[i]
    rescale = bool(p.get("rescale", False))
    if method == "magnitude":
        return sparsify.magnitude(delta, density, rescale, aids=aids, inplace=True)
    if method == "random":
        return sparsify.random(delta, density, rescale, generator, aids=aids, inplace=True)
    if method == "magnitude_outliers":
        gamma = per_model(p, "gamma", n)[i]
        return sparsify.magnitude_outliers(delta, density, gamma, rescale, aids=aids, inplace=True)
    eps = per_model(p, "epsilon", n)[i]
    return sparsify.della_magprune(delta, density, eps, rescale, generator, aids=aids, inplace=True)


def consensus_mask(weighted: torch.Tensor, method: str) -> torch.Tensor:
    """1 where a model's weighted delta agrees with the elected sign (ties at 0 count as +)."""
    sign = weighted.sign()
    if method == "sum":
        elected = (weighted.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1
    else:
        elected = (sign.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1
    return (sign == elected).to(weighted.dtype)


def combine(
    weighted: list[torch.Tensor],
    w: list[torch.Tensor],
    base: torch.Tensor,
    consensus: str | None,
    p: dict[str, Any],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Steps 4–6: base + λ · (consensus-masked) Σ weighted [/ Σ weights]; consumes
    ``weighted``; ``out`` receives the result."""
    normalize = bool(p.get("normalize", False))
    if consensus:
        mixed, divisor = _agreeing_sum(weighted, w, consensus, normalize)
    else:
        mixed = sum_in_order(weighted, inplace=True)
        divisor = sum_in_order(w) if normalize else None
        if divisor is not None and divisor.abs() < 1e-8:
            divisor = torch.ones_like(divisor)
    if normalize:
        mixed = mixed.div_(divisor)
    lam = float(p.get("lambda", 1.0))
    if lam != 1:
        mixed = mixed.mul_(lam)
    return torch.add(base, mixed, out=out)


def sum_in_order(xs: list[torch.Tensor], inplace: bool = False) -> torch.Tensor:
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
    """Σ ind_i · w_i for 0/1 indicators, as ``sum_in_order`` adds them (ind · w is exact, so
    the fused ``add_(ind, alpha=w)`` gives the bits of adding the products); consumes ``ind``."""
    if len(ind) > 4:
        return sum_in_order([x.mul_(wi) for x, wi in zip(ind, w)], inplace=True)
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
    if method == "sum":
        votes = sum_in_order(weighted)
    else:
        votes = sum_in_order([x.sign() for x in weighted], True)
    # e = +1 where votes ≥ 0, else −1, in one pass: copysign gives −1 only for −0 beyond that,
    # and votes = −0 only when every entry is ±0, where either e keeps nothing
    elected = torch.copysign(_ONE, votes, out=votes)
    kept = [x.mul_(elected).clamp_(min=0) for x in weighted]
    mixed = sum_in_order(kept, inplace=not normalize).mul_(elected)  # kept: for the divisor
    if not normalize:
        return mixed, None
    divisor = _weight_sum([k.sign_() for k in kept], w)
    return mixed, divisor.add_(torch.eq(divisor, 0, out=torch.empty_like(divisor)))  # 0 -> 1


_BOUNDS = {
    "weight": (0.0, 1.0),
    "density": (0.0, 1.0),
    "lambda": (0.0, 2.0),
    "gamma": (0.0, 0.1),
    "epsilon": (0.0, 0.2),
}


def _preset(
    name: str,
    sparsification: str | None,
    consensus: str | None,
    *,
    normalize: bool,
    rescale: bool,
    paper: str,
    extra: dict[str, float] | None = None,
) -> None:
    extra = extra or {}
    per_model_params = ("weight", "density", *extra)

    def op(
        tensors: list[torch.Tensor],
        base: torch.Tensor | None,
        *,
        generator: torch.Generator | None = None,
        **p: Any,
    ) -> torch.Tensor:
        return general_task_arithmetic(
            tensors,
            base,
            sparsification=sparsification,
            consensus=consensus,
            generator=generator,
            **p,
        )

    op.__doc__ = f"{name}: sparsify={sparsification}, consensus={consensus} ({paper})"
    PRESETS[name] = (sparsification, consensus)
    register_op(
        name,
        needs_base=True,
        per_model_params=per_model_params,
        global_params=("normalize", "rescale", "lambda", "int8_mask"),
        defaults={
            "density": 1.0,
            "normalize": normalize,
            "rescale": rescale,
            "lambda": 1.0,
            "int8_mask": False,
            **extra,
        },
        stochastic=sparsification in ("random", "della_magprune"),
        paper=paper,
        mergekit_name=name,
        param_bounds={k: _BOUNDS[k] for k in (*per_model_params, "lambda")},
    )(op)


_preset(
    "task_arithmetic",
    None,
    None,
    normalize=False,
    rescale=False,
    paper="Ilharco et al. 2023, Editing Models with Task Arithmetic",
)
_preset(
    "ties",
    "magnitude",
    "sum",
    normalize=True,
    rescale=False,
    paper="Yadav et al. 2023, TIES-Merging",
)
_preset(
    "dare_ties",
    "random",
    "sum",
    normalize=False,
    rescale=True,
    paper="Yu et al. 2024, Language Models are Super Mario (DARE) + TIES",
)
_preset(
    "dare_linear",
    "random",
    None,
    normalize=False,
    rescale=True,
    paper="Yu et al. 2024, Language Models are Super Mario (DARE)",
)
_preset(
    "breadcrumbs",
    "magnitude_outliers",
    None,
    normalize=False,
    rescale=False,
    paper="Davari & Belilovsky 2024, Model Breadcrumbs",
    extra={"gamma": 0.01},
)
_preset(
    "breadcrumbs_ties",
    "magnitude_outliers",
    "sum",
    normalize=False,
    rescale=False,
    paper="Davari & Belilovsky 2024, Model Breadcrumbs + TIES",
    extra={"gamma": 0.01},
)
_preset(
    "della",
    "della_magprune",
    "sum",
    normalize=True,
    rescale=True,
    paper="Deep et al. 2024, DELLA-Merging",
    extra={"epsilon": 0.15},
)
_preset(
    "della_linear",
    "della_magprune",
    None,
    normalize=False,
    rescale=True,
    paper="Deep et al. 2024, DELLA-Merging",
    extra={"epsilon": 0.15},
)
