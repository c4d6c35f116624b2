"""AdaMerging's gradient job: the entropy gradient with respect to the merge coefficients.

The merge is theta = theta_0 + sum_k lambda[G, k] tau_k (one row of lambda per tensor group G:
one group for task-wise AdaMerging, one per tensor for layer-wise), which is exactly the
Frank-Wolfe pool space's task-arithmetic layout. So the job reuses FW's streamed machinery
(``evomerge.fw.job``): ``build_theta`` builds the merge one tensor at a time, one backward pass
gives g = dH/dtheta, and ``stream_alignment`` streams the experts past g. By the chain rule
dH/dlambda[G, k] = <g_G, tau_kG>, which is ``Alignment.tv_dots[k, G]`` (what FW-Soft's Adam uses
too); peak memory does not grow with the number of experts.

That streamed path (``stream=True``) keeps memory flat for many large experts. By default the
job instead keeps the base and the stacked task vectors resident in the process (as the reference
code keeps every model in memory): the same arithmetic, no disk read per step, and only
``tv_dots`` (plus the gradient's norms) is filled in the returned ``Alignment``.

``run_entropy_job`` never raises: a failure comes back as ``Alignment.failed`` with its text.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from evomerge.adamerging.objective import EntropyObjective, entropy_loss
from evomerge.fw.checkpoint import LazyCheckpoint, Meter
from evomerge.fw.job import Resolver, build_theta, stream_alignment
from evomerge.fw.lmo import Alignment
from evomerge.fw.proxy import resident_model
from evomerge.fw.space import FWPoolSpace


@dataclass(frozen=True)
class EntropyRequest:
    """One AdaMerging step for a worker: the coefficients (genes) and the batch's step number."""

    index: int
    x: np.ndarray
    step: int
    stream: bool = False  # True: FW's streamed theta/alignment (memory flat in the experts)


@lru_cache(maxsize=2)
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _load(model: torch.nn.Module, theta: dict) -> dict:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            if n in theta:
                p.copy_(theta[n])
    return params


def entropy_gradient(model, theta: dict, spec: EntropyObjective, step: int, base: str):
    """Load theta into the resident model; (entropy, {tensor name: dH/dtheta})."""
    params = _load(model, theta)
    tok = _tokenizer(base) if spec.kind == "lm" else None
    model.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    try:
        loss = entropy_loss(model, spec, step, tok)
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


def run_entropy_job(
    space: FWPoolSpace,
    request: EntropyRequest,
    objective: EntropyObjective,
    resolve: Resolver | None = None,
) -> Alignment:
    """Build the merge at ``request.x``, take the entropy gradient and stream the experts."""
    resolve = resolve or space.resolve
    t0 = time.perf_counter()
    try:
        meter = Meter()
        base = resolve(space.base)
        if request.stream:
            theta = build_theta(space, request.x, resolve, meter)
        else:
            tv = resident_task_vectors(space, resolve)
            theta = tv.theta(space, request.x)
        model = resident_model(objective, base)
        loss, grads = entropy_gradient(model, theta, objective, request.step, base)
        if not math.isfinite(loss):
            return Alignment.failed(f"entropy is {loss} at candidate {request.index}")
        if request.stream:
            arrays = stream_alignment(space, theta, grads, resolve, meter)
        else:
            arrays = tv.alignment(space, grads)
        resident = sum(t.numel() * t.element_size() for t in (*theta.values(), *grads.values()))
        return Alignment(**arrays, loss=loss, peak_bytes=meter.peak, resident_bytes=resident)
    except Exception as err:  # noqa: BLE001 - failures are data
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Alignment.failed(
            f"{type(err).__name__}: {err} [at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}]"
            f" after {time.perf_counter() - t0:.1f} s"
        )


@torch.no_grad()
def entropy_at(
    space: FWPoolSpace,
    x: np.ndarray,
    objective: EntropyObjective,
    step: int,
    resolve: Resolver | None = None,
) -> float:
    """The objective at ``x`` on the batch of ``step``, without a gradient (raises on error)."""
    resolve = resolve or space.resolve
    base = resolve(space.base)
    theta = resident_task_vectors(space, resolve).theta(space, x)
    model = resident_model(objective, base)
    _load(model, theta)
    tok = _tokenizer(base) if objective.kind == "lm" else None
    return float(entropy_loss(model, objective, step, tok))


class TaskVectors:
    """The base tensors and, per tensor, the experts' task vectors stacked (K, *shape)."""

    def __init__(self, space: FWPoolSpace, resolve: Resolver) -> None:
        with LazyCheckpoint(resolve(space.base)) as b:
            self.base = {n: b.get(n) for n in space.tensors}
        stacks: dict[str, list[torch.Tensor]] = {n: [] for n in space.tensors}
        for member in space.members:
            with LazyCheckpoint(resolve(member)) as ck:
                for n in space.tensors:
                    stacks[n].append(ck.get(n) - self.base[n])
        self.tv = {n: torch.stack(v) for n, v in stacks.items()}

    @torch.no_grad()
    def theta(self, space: FWPoolSpace, x: np.ndarray) -> dict[str, torch.Tensor]:
        """theta_0 + sum_k W[G, k] tau_k, the same sum (order and dtype) as ``build_theta``."""
        w, _ = space.split(x)
        group_of = _group_of(space)
        out = {}
        for n, base in self.base.items():
            t = base.clone()
            for k, c in enumerate(w[group_of[n]]):
                if c != 0.0:
                    t += float(c) * self.tv[n][k]
            out[n] = t
        return out

    @torch.no_grad()
    def alignment(self, space: FWPoolSpace, grads: dict) -> dict[str, np.ndarray]:
        k_n, g_n = space.n_members, space.n_groups
        dots, grad_sq = np.zeros((k_n, g_n)), np.zeros(g_n)
        group_of = _group_of(space)
        for n, g in grads.items():
            gi, flat = group_of[n], g.double().reshape(-1)
            dots[:, gi] += (self.tv[n].double().reshape(k_n, -1) @ flat).numpy()
            grad_sq[gi] += float(flat @ flat)
        zeros_kg, zeros_g = np.zeros((k_n, g_n)), np.zeros(g_n)
        return {
            "tv_dots": dots,
            "tv_norms": zeros_kg,  # not needed by AdaMerging: left at zero
            "w_norms": zeros_kg.copy(),
            "base_dots": zeros_g,
            "theta_dots": zeros_g.copy(),
            "grad_norms": np.sqrt(grad_sq),
        }


def _group_of(space: FWPoolSpace) -> dict[str, int]:
    return {n: gi for gi, g in enumerate(space.groups) for n in g}


_RESIDENT: dict[tuple, TaskVectors] = {}


def resident_task_vectors(space: FWPoolSpace, resolve: Resolver) -> TaskVectors:
    """One resident set of task vectors per process (a new space replaces the old one)."""
    key = (resolve(space.base), tuple(resolve(m) for m in space.members), tuple(space.tensors))
    if key not in _RESIDENT:
        _RESIDENT.clear()
        _RESIDENT[key] = TaskVectors(space, resolve)
    return _RESIDENT[key]
