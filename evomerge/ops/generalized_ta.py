"""Generalized task arithmetic: sparsify × sign consensus × normalize, and its named presets.

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

from evomerge.ops import sparsify
from evomerge.ops._registry import per_model, register_op


def _sparsify(
    delta: torch.Tensor,
    method: str | None,
    i: int,
    p: dict[str, Any],
    n: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if method is None:
        return delta
    density = per_model(p, "density", n)[i]
    rescale = bool(p.get("rescale", False))
    if method == "magnitude":
        return sparsify.magnitude(delta, density, rescale)
    if method == "random":
        return sparsify.random(delta, density, rescale, generator)
    if method == "magnitude_outliers":
        return sparsify.magnitude_outliers(delta, density, per_model(p, "gamma", n)[i], rescale)
    return sparsify.della_magprune(
        delta, density, per_model(p, "epsilon", n)[i], rescale, generator
    )


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
    **p: Any,
) -> torch.Tensor:
    n = len(tensors)
    if n == 0:
        return base.clone()
    deltas = torch.stack(
        [_sparsify(t - base, sparsification, i, p, n, generator) for i, t in enumerate(tensors)]
    )
    weights = torch.tensor(per_model(p, "weight", n), dtype=deltas.dtype, device=deltas.device)
    weights = weights.reshape((n,) + (1,) * (deltas.dim() - 1))
    weighted = deltas * weights
    if consensus:
        mask = consensus_mask(weighted, consensus)
        mixed = (weighted * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = weights.sum(dim=0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    if p.get("normalize", False):
        mixed = mixed / divisor
    lam = float(p.get("lambda", 1.0))
    if lam != 1:
        mixed = mixed * lam
    return base + mixed


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
    bounds = {
        "weight": (0.0, 1.0),
        "density": (0.0, 1.0),
        "lambda": (0.0, 2.0),
        "gamma": (0.0, 0.1),
        "epsilon": (0.0, 0.2),
    }

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
        param_bounds={k: bounds[k] for k in (*per_model_params, "lambda")},
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
