"""The named presets of generalized task arithmetic (generalized_ta.py), registered as operators
with mergekit 0.1.5's names, parameters and defaults.

Papers: Task Arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", 2023);
TIES-Merging (Yadav et al., 2023); DARE (Yu et al., "Language Models are Super Mario", 2024);
Model Breadcrumbs (Davari & Belilovsky, 2024); DELLA-Merging (Deep et al., 2024).
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.ops._registry import register_op
from evomerge.ops.generalized_ta import general_task_arithmetic


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
        resident: Any = None,
        out: torch.Tensor | None = None,
        **p: Any,
    ) -> torch.Tensor:
        return general_task_arithmetic(
            tensors,
            base,
            sparsification=sparsification,
            consensus=consensus,
            generator=generator,
            resident=resident,
            out=out,
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
