"""AIM — Activation-Informed Merging.

Nobari, Alimohammadi, ArjomandBigdeli, Srivastava, Ahmed, Azizan 2025, "Activation-Informed
Merging of Large Language Models" (arXiv 2502.02421, NeurIPS 2025); the activation-informed
method of the Long-to-Short merging study (Wu et al. 2025, arXiv 2503.20641), which applies it
to a TIES merge with ω = 0.4 ("AIM-Ties").

AIM is a pass over the result of any merge: the base model runs once on a task-agnostic
calibration set; the input channels whose mean absolute activation is large are the ones the
base depends on most, and the merged update of the weights reading them is shrunk, as weight
regularization in continual learning protects weights important to old tasks. Per tensor W
(a linear layer's [out, in] weight, or a norm's [d] weight), with a_j the base's mean |x_j| over
the calibration tokens of the module's input channel j:

    s_j = |a_j| / max_k |a_k|                      (importance in [0, 1])
    θ   = θ_0 + (θ_M − θ_0) ⊙ (1 − (1 − ω) · s)    (broadcast over the last dimension)

where θ_M is the inner merge (here: task_arithmetic, TIES, DARE-TIES, DARE-linear, the methods
the paper evaluates) and ω ∈ [0, 1] the balance factor: ω = 1 is the inner merge unchanged, ω = 0
keeps the base's weights on its most activated channel. Tensors with no recorded activation
(embeddings, which the official code leaves alone, biases, and a tied head that is the
embedding) are the inner merge unchanged.

Where this comes from: the paper's method section could not be read from here (only its
abstract and reviews); the equations above are read from the authors' code
(ahnobari/ActivationInformedMerging, ``MergeModels/ActivationMerging/_utils.py``:
``get_calib_feat``, ``apply_relaxation``, ``relax_on_merged``) and agree with the reviews'
summary ("input activation magnitudes from a small calibration set ... constrains their
updates"). That code's optional ``nonlinear_scaling`` of s is the identity by default and is
not offered. The activations are computed once per process by ``evomerge.merge.calibration`` from the
recipe's ``calibration`` block and handed to the operator as ``activation``.
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.errors import UserInputError
from evomerge.merge.ops import task_arithmetic  # noqa: F401  (the inner operators must be registered first)
from evomerge.merge.ops._registry import OPS, register_op

PAPER = "Nobari et al. 2025, Activation-Informed Merging of Large Language Models (AIM)"
INNER = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
DEFAULT_OMEGA = 0.4  # the Long-to-Short study's ω, and the authors' performAIM.py default


def importance(activation: torch.Tensor) -> torch.Tensor:
    """s = |a| / max|a|: one value in [0, 1] per input channel (all 0 if nothing was active)."""
    a = activation.abs().float()
    top = a.max()
    return a / top if top > 0 else torch.zeros_like(a)


def relax(
    merged: torch.Tensor, base: torch.Tensor, activation: torch.Tensor | None, omega: float
) -> torch.Tensor:
    """θ_0 + (θ_M − θ_0) ⊙ (1 − (1 − ω)·s), s over the last dimension (the input channels)."""
    _check_omega(omega)
    if activation is None:
        return merged
    if activation.shape[-1] != merged.shape[-1] or activation.dim() != 1:
        raise UserInputError(
            f"AIM: activation statistics of {tuple(activation.shape)} do not match a tensor of "
            f"shape {tuple(merged.shape)}; the calibration model must be the recipe's base_model"
        )
    factor = 1.0 - (1.0 - omega) * importance(activation).to(merged.device)
    return base + (merged - base) * factor


def _check_omega(omega: float) -> None:
    if not 0.0 <= omega <= 1.0:
        raise UserInputError(f"parameter 'omega': {omega} is outside [0, 1]; AIM's ω is in [0, 1]")


def _register(inner: str) -> None:
    spec = OPS[inner]

    def op(
        tensors: list[torch.Tensor],
        base: torch.Tensor | None,
        *,
        generator: torch.Generator | None = None,
        **params: Any,
    ) -> torch.Tensor:
        # AIM's own parameters; the rest go to the inner merge
        activation = params.pop("activation", None)
        omega = params.pop("omega", DEFAULT_OMEGA)
        _check_omega(float(omega))  # before the inner merge: a bad recipe fails at once
        merged = spec.fn(tensors, base, generator=generator, **params)
        assert base is not None  # needs_base: the planner always passes it
        return relax(merged, base, activation, float(omega))

    op.__doc__ = f"AIM over {inner}: θ_0 + ({inner} − θ_0) ⊙ (1 − (1 − ω)·s)"
    register_op(
        f"aim_{inner}",
        needs_base=True,
        needs_activations=True,
        per_model_params=spec.per_model_params,
        global_params=(*spec.global_params, "omega"),
        defaults={**spec.defaults, "omega": DEFAULT_OMEGA},
        stochastic=spec.stochastic,
        paper=f"{PAPER}, over {spec.paper}",
        param_bounds={**spec.param_bounds, "omega": (0.0, 1.0)},
    )(op)


for _inner in INNER:
    _register(_inner)
