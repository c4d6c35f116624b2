"""The Frank-Wolfe gradient job: theta_t, one backward pass, then the pool streamed past it.

FW-Merging (Chen et al., ICCV 2025) needs, per iteration, the gradient g of the proxy loss at
the current merge and the alignment of g with every pool member. The reference code keeps every
checkpoint in memory; here only theta_t (the resident model), g and ONE pool tensor at a time
are alive: theta_t is built tensor by tensor from lazily opened checkpoints, and the alignment
pass opens one member at a time and reads one tensor at a time. Peak memory is therefore
independent of the pool size (``Alignment.peak_bytes`` reports the streamed part).

``run_lmo_job`` never raises: a failure comes back as ``Alignment.failed`` with the error text.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from evomerge.fw.checkpoint import LazyCheckpoint, Meter
from evomerge.fw.lmo import Alignment
from evomerge.fw.proxy import ProxySpec, proxy_loss, resident_model
from evomerge.fw.space import FWPoolSpace

Resolver = Callable[[str], str]


@dataclass(frozen=True)
class LmoRequest:
    """What a worker needs for one FW candidate: its genes and the proxy objective."""

    index: int
    x: np.ndarray
    proxy: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def build_theta(space: FWPoolSpace, x: np.ndarray, resolve: Resolver, meter: Meter) -> dict:
    """The merge the genes describe, as {tensor name: float32 tensor}, streaming the pool."""
    w, hist = space.split(x)
    group_of = {n: gi for gi, g in enumerate(space.groups) for n in g}
    with LazyCheckpoint(resolve(space.base)) as base:
        theta = {n: base.get(n) for n in space.tensors}
        for k, member in enumerate(space.members):
            if not np.any(w[:, k] != 0):
                continue
            with LazyCheckpoint(resolve(member), meter) as ck:
                for n in space.tensors:
                    c = float(w[group_of[n], k])
                    if c != 0.0:
                        t, b = ck.get(n), base.get(n)
                        theta[n] += c * (t - b)
                        meter.drop(t)
        if len(hist):
            _replay_ties(space, theta, hist, resolve, meter, group_of)
    return theta


def _replay_ties(space, theta, hist, resolve, meter, group_of) -> None:
    # Step by step, opening only the members this step selected and closing them before the
    # next: each step reads every tensor from one member, so at most one model's worth of
    # mapped pages is alive, whatever the pool size (keeping all handles open made RSS grow).
    for row in hist:
        a, sel = float(row[0]), np.rint(row[1:]).astype(int)
        if a <= 0:
            continue
        handles: dict[int, LazyCheckpoint] = {}
        try:
            for n in space.tensors:
                k = int(sel[group_of[n]])
                if k < 0:
                    continue
                if k not in handles:
                    handles[k] = LazyCheckpoint(resolve(space.members[k]), meter)
                s = handles[k].get(n)
                theta[n] += a * trim(s - theta[n], space.density)
                meter.drop(s)
        finally:
            for h in handles.values():
                h.close()


def trim(d: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (TIES' trim)."""
    if density >= 1.0 or d.numel() == 0:
        return d
    k = max(1, int(density * d.numel()))
    flat = d.abs().reshape(-1)
    cut = torch.topk(flat, k, sorted=False).values.min()
    return torch.where(d.abs() >= cut, d, torch.zeros_like(d))


def gradient(model: torch.nn.Module, theta: dict, spec: ProxySpec, base_folder: str):
    """Load theta into the resident model, one backward pass; returns (loss, {name: grad})."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            if n in theta:
                p.copy_(theta[n])
    model.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    try:
        loss = proxy_loss(model, spec, base_folder)
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


@torch.no_grad()
def stream_alignment(
    space: FWPoolSpace, theta: dict, grads: dict, resolve: Resolver, meter: Meter
) -> dict[str, np.ndarray]:
    """Per member and group: <g, tau>, ||tau||, ||theta_k||, one member and tensor at a time."""
    k_n, g_n = space.n_members, space.n_groups
    tv_dots, tv_sq, w_sq = np.zeros((k_n, g_n)), np.zeros((k_n, g_n)), np.zeros((k_n, g_n))
    base_dots, theta_dots, grad_sq = np.zeros(g_n), np.zeros(g_n), np.zeros(g_n)
    with LazyCheckpoint(resolve(space.base), meter) as base:
        for gi, group in enumerate(space.groups):
            for n in (n for n in group if n in grads):
                g, b = grads[n].double(), base.get(n)
                base_dots[gi] += float((g * b).sum())
                theta_dots[gi] += float((g * theta[n]).sum())
                grad_sq[gi] += float((g * g).sum())
                meter.drop(b)
        for k, member in enumerate(space.members):
            with LazyCheckpoint(resolve(member), meter) as ck:
                for gi, group in enumerate(space.groups):
                    for n in (n for n in group if n in grads):
                        t, b = ck.get(n), base.get(n)
                        tv = meter.hold((t - b).double())
                        tv_dots[k, gi] += float((grads[n].double() * tv).sum())
                        tv_sq[k, gi] += float((tv * tv).sum())
                        w_sq[k, gi] += float((t.double() ** 2).sum())
                        meter.drop(t, b, tv)
    return {
        "tv_dots": tv_dots,
        "tv_norms": np.sqrt(tv_sq),
        "w_norms": np.sqrt(w_sq),
        "base_dots": base_dots,
        "theta_dots": theta_dots,
        "grad_norms": np.sqrt(grad_sq),
    }


def run_lmo_job(
    space: FWPoolSpace, request: LmoRequest, resolve: Resolver | None = None
) -> Alignment:
    """Build theta_t, take its proxy gradient and stream the pool; never raises."""
    resolve = resolve or (lambda ref: ref)
    t0 = time.perf_counter()
    try:
        spec = ProxySpec.parse(request.proxy)
        meter = Meter()
        theta = build_theta(space, request.x, resolve, meter)
        model = resident_model(spec, resolve(space.base))
        loss, grads = gradient(model, theta, spec, resolve(space.base))
        if not math.isfinite(loss):
            return Alignment.failed(f"proxy loss is {loss} at candidate {request.index}")
        arrays = stream_alignment(space, theta, grads, resolve, meter)
        resident = sum(t.numel() * t.element_size() for t in (*theta.values(), *grads.values()))
        return Alignment(**arrays, loss=loss, peak_bytes=meter.peak, resident_bytes=resident)
    except Exception as err:  # noqa: BLE001 - failures are data
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Alignment.failed(
            f"{type(err).__name__}: {err} [at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}]"
            f" after {time.perf_counter() - t0:.1f} s"
        )
