"""The weights of a pool-space candidate and the gradient's alignment with the pool, two ways.

Shared by the Frank-Wolfe and AdaMerging gradient jobs (``evomerge.workers.gradient_job``).
With theta = theta_base + sum_k W[G, k] tau_k (tau_k the task vector of member k, one row of W
per tensor group G), the drivers need, per member and group, <g, tau_k> and a few norms of the
gradient g at theta (``Alignment``):

* streamed (``build_theta``, ``stream_alignment``): only theta, g and ONE pool tensor at a time
  are alive; members are opened one at a time and read one tensor at a time, so peak memory
  does not depend on the pool size (``Meter``; FW-Merging's reference code keeps every
  checkpoint in memory). The TIES variant's step history is replayed here too.
* resident (``TaskVectors``): the base and the stacked task vectors stay in the process, as
  AdaMerging's reference code keeps every model in memory: no disk read per step, the same sum
  in the same order and dtype, and only ``tv_dots`` and the gradient's norms filled in.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from evomerge.io.lazy_checkpoint import LazyCheckpoint, Meter
from evomerge.spaces.fw_pool import FWPoolSpace

Resolver = Callable[[str], str]


@torch.no_grad()
def build_theta(space: FWPoolSpace, x: np.ndarray, resolve: Resolver, meter: Meter) -> dict:
    """The merge the genes describe, as {tensor name: float32 tensor}, streaming the pool."""
    w, hist = space.split(x)
    group_of = _group_of(space)
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
