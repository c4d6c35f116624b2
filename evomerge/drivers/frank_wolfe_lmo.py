"""The Frank-Wolfe arithmetic on pool coefficients: the LMO and the step (FW-Merging, Chen et al.,
ICCV 2025).

Pure numpy, no model and no disk: the gradient job (``evomerge.workers.gradient_job``) reduces
the gradient at the current merge to a handful of numbers per pool member and tensor group
(``Alignment``), and everything FW decides follows from them. With theta = theta_base + sum_k W[G, k] tau_k (tau_k the task
vector of member k, W one row per tensor group G):

* the LMO's cosine of the gradient g with member k is tv_dots / (||g|| ||tau||) (or, aligning
  with the weights as the reference code does, (base_dots + tv_dots) / (||g|| ||theta_k||));
* the Frank-Wolfe gap of vertex k is <g, theta_k - theta_t> = base_dots + tv_dots - theta_dots;
* the gradient of the loss with respect to W[G, k] is exactly tv_dots[k, G] (FW-Soft's Adam).
"""

from __future__ import annotations

import numpy as np

from evomerge.workers.gradient import Alignment

ALIGN_ON = ("task_vector", "weights")
GRANULARITIES = ("layer", "task")


def cosines(al: Alignment, align_on: str) -> np.ndarray:
    """(K, G) cosine of the gradient with each member's task vector (or weights) per group."""
    if align_on == "task_vector":
        dots, norms = al.tv_dots, al.tv_norms
    else:
        dots, norms = al.base_dots[None, :] + al.tv_dots, al.w_norms
    denom = norms * al.grad_norms[None, :]
    safe = np.where(denom > 0, denom, 1.0)
    return np.where(denom > 0, dots / safe, 0.0)


def select(al: Alignment, *, granularity: str, align_on: str, guard: bool) -> np.ndarray:
    """The LMO: per group, the member most anti-aligned with the gradient, or -1 (hold).

    Layer-wise (the reference code's default) picks per tensor group; task-wise sums the
    per-group cosines (as the reference code does) and picks one member for every group. A group
    whose gradient is zero (a buffer, a frozen tensor) always holds. With ``guard`` a group (or,
    task-wise, the whole model) also holds when moving to the vertex would not decrease the
    linearised loss (Frank-Wolfe gap <= 0); the reference code instead steps towards an all-zero
    tensor there, which is not a point of the pool's hull, so we do not follow it.
    """
    cos = cosines(al, align_on)
    gap = al.base_dots[None, :] + al.tv_dots - al.theta_dots[None, :]
    n_groups = cos.shape[1]
    live = al.grad_norms > 0
    if granularity == "layer":
        sel = cos.argmin(axis=0)
        cols = np.arange(n_groups)
        move = live & ((gap[sel, cols] < 0) if guard else True)
    else:
        k = int(cos[:, live].sum(axis=1).argmin()) if live.any() else 0
        sel = np.full(n_groups, k)
        ok = gap[k, live].sum() < 0 if guard else True
        move = live & ok
    return np.where(move, sel, -1).astype(np.int64)


def gamma(t: int, step_size: float) -> float:
    """The classical open-loop Frank-Wolfe step 2 / (t + 2), scaled."""
    return step_size * 2.0 / (t + 2.0)


def fw_step(w: np.ndarray, sel: np.ndarray, a: float) -> np.ndarray:
    """theta <- theta + a (s - theta) in coefficient form, for the groups that move."""
    w = np.array(w, dtype=float, copy=True)
    rows = np.flatnonzero(sel >= 0)
    w[rows] *= 1.0 - a
    w[rows, sel[rows]] += a
    return w
