"""The gradient job of Frank-Wolfe and AdaMerging: theta at the genes, one backward pass, then
the gradient's alignment with the pool (written once for both drivers).

FW-Merging (Chen et al., ICCV 2025) needs, per iteration, the gradient g of a proxy loss at the
current merge and its alignment with every pool member; AdaMerging (Yang et al., ICLR 2024)
needs dH/dlambda[G, k] = <g_G, tau_kG> for the entropy H, which is the same ``tv_dots``. Both
merge as theta = theta_0 + sum_k W[G, k] tau_k (``spaces.fw_pool``), so one job serves both:
build theta (``pool_weights``: streamed, or from resident task vectors), load it into one
resident model skeleton, differentiate the request's objective, reduce g to an ``Alignment``.

A worker runs it for a candidate whose ``wants`` hold a ``GradientRequest``
(``workers.wants``); ``run_gradient_job`` never raises: a failure comes back as
``Alignment.failed`` with the error text.
"""

from __future__ import annotations

import math
import time
import traceback

import numpy as np
import torch

from evomerge.io.lazy_checkpoint import Meter
from evomerge.spaces.fw_pool import FWPoolSpace
from evomerge.workers.gradient import Alignment, GradientRequest
from evomerge.workers.pool_weights import (
    Resolver,
    build_theta,
    resident_task_vectors,
    stream_alignment,
)

_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def resident_model(kind: str, base_folder: str) -> torch.nn.Module:
    """One model skeleton per (kind, base), kept for the whole search (weights overwritten)."""
    key = (kind, str(base_folder))
    if key not in _MODELS:
        if kind == "digits":
            from evomerge.zoo.digits import load_digits_model

            model = load_digits_model(base_folder)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(base_folder, torch_dtype=torch.float32)
        _MODELS.clear()  # only one resident model: a new base replaces the old one
        _MODELS[key] = model.eval()
    return _MODELS[key]


def _load(model: torch.nn.Module, theta: dict) -> dict:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            if n in theta:
                p.copy_(theta[n])
    return params


def loss_gradient(model, theta: dict, objective, step: int, base_folder: str):
    """Load theta into the resident model, one backward pass: (loss, {tensor name: grad})."""
    params = _load(model, theta)
    model.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    try:
        loss = objective.value(model, step, base_folder)
        loss.backward()
        grads = {
            n: p.grad.detach().clone()
            for n, p in params.items()
            if p.grad is not None and n in theta
        }
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)
    return float(loss.detach()), grads


def run_gradient_job(
    space: FWPoolSpace, request: GradientRequest, resolve: Resolver | None = None
) -> Alignment:
    """Build theta at ``request.x``, take the objective's gradient, align it with the pool."""
    resolve = resolve or space.resolve
    t0 = time.perf_counter()
    try:
        if not request.stream and space.variant == "ties":
            raise ValueError("the TIES step history is replayed only when streaming the pool")
        meter = Meter()
        base = resolve(space.base)
        if request.stream:
            theta = build_theta(space, request.x, resolve, meter)
        else:
            vectors = resident_task_vectors(space, resolve)
            theta = vectors.theta(space, request.x)
        model = resident_model(request.objective.kind, base)
        loss, grads = loss_gradient(model, theta, request.objective, request.step, base)
        if not math.isfinite(loss):
            label = request.objective.label
            return Alignment.failed(f"{label} is {loss} at candidate {request.index}")
        if request.stream:
            arrays = stream_alignment(space, theta, grads, resolve, meter)
        else:
            arrays = vectors.alignment(space, grads)
        resident = sum(t.numel() * t.element_size() for t in (*theta.values(), *grads.values()))
        return Alignment(**arrays, loss=loss, peak_bytes=meter.peak, resident_bytes=resident)
    except Exception as err:  # noqa: BLE001 - failures are data
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Alignment.failed(
            f"{type(err).__name__}: {err} [at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}]"
            f" after {time.perf_counter() - t0:.1f} s"
        )


@torch.no_grad()
def objective_at(
    space: FWPoolSpace, x: np.ndarray, objective, step: int, resolve: Resolver | None = None
) -> float:
    """The objective at ``x`` on the batch of ``step``, without a gradient (raises on error)."""
    resolve = resolve or space.resolve
    base = resolve(space.base)
    theta = resident_task_vectors(space, resolve).theta(space, x)
    model = resident_model(objective.kind, base)
    _load(model, theta)
    return float(objective.value(model, step, base))
