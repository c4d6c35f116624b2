"""Frank-Wolfe merging over a pool of candidate checkpoints.

Chen et al., "FW-Merging: Scaling Model Merging with Frank-Wolfe Optimization" (ICCV 2025;
reference code hmarkc/FW-Merging). Minimise a proxy loss f over the hull of the pool: each
iteration takes g_t = grad f(theta_t), a linear minimisation oracle picks, per tensor group, the
member whose task vector is most anti-aligned with g_t (cosine; layer-wise is the code's
default), and theta moves towards it with gamma_t = step_size * 2 / (t + 2):

* ``task_arithmetic``: theta <- theta + lam * gamma_t (s_t - theta) (the classical FW step);
* ``ties``: theta <- theta + lam * gamma_t * trim_density(s_t - theta) (paper: density 0.3,
  lam 0.9);
* ``soft`` (FW-Soft): every LMO adds its picks to a collected set; the merge is
  theta_base + sum lambda[G, k] tau_k over the set, lambda fitted by Adam (AdaMerging-style,
  lr 1e-3, init 0.3) for ``soft_steps`` gradient steps per LMO.

FW is not a black-box method: ``tell`` needs the gradient's alignment with the pool at each
candidate. Each candidate but the last wants it (``Candidate.wants["gradient"]``, a
``GradientRequest`` for the ``proxy`` objective); a worker computes it beside the fitness
(``evomerge.workers.gradient_job``) and ``tell`` receives the ``Alignment`` in ``wanted``
(``drivers.pool_gradient``). All decisions are numpy on that small summary
(``drivers.frank_wolfe_lmo``), so the driver state stays small and exactly resumable. One
candidate per ``ask``: FW is sequential. Where we depart from the reference code (hold instead of
stepping to a zero tensor; cosine with task vectors by default; TIES trimmed per tensor) the
modules say why.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers import frank_wolfe_lmo as L
from evomerge.drivers.base import register_driver
from evomerge.drivers.frank_wolfe_state import FWParams, FWState
from evomerge.drivers.pool_gradient import PoolGradientDriver, adam_step
from evomerge.errors import UserInputError
from evomerge.fitness.proxy_loss import ProxySpec
from evomerge.workers.gradient import Alignment, GradientRequest


@register_driver
class FrankWolfe(PoolGradientDriver):
    name: ClassVar[str] = "frank_wolfe"
    options_cls: ClassVar[type] = FWParams  # the dataclass driver.options are parsed into

    @classmethod
    def misfit(cls, space: Any) -> str | None:
        if space.kind != "fw_pool":
            return "Frank-Wolfe steps through a pool of checkpoints (space kind fw_pool)"
        return None

    def __init__(
        self,
        dim: int,
        lower: np.ndarray,
        upper: np.ndarray,
        x0: np.ndarray,
        *,
        seed: int,
        **options: Any,
    ) -> None:
        super().__init__(dim, lower, upper, x0, seed=seed, **options)
        self.params = p = self.options
        self.objective = ProxySpec.parse(p.proxy)
        k, g = p.n_members, _n_groups(self.dim, p)
        self.n_coef, self.n_groups = g * k, g
        w0 = self.x0[: self.n_coef].reshape(g, k)
        hist0 = np.tile(
            np.r_[0.0, np.full(g, -1.0)], (p.iterations if p.variant == "ties" else 0, 1)
        )
        zeros = np.zeros((g, k))
        self.state = FWState(
            t=0,
            phase="run",
            w=w0.copy(),
            hist=hist0,
            mask=zeros.copy(),
            m=zeros.copy(),
            v=zeros.copy(),
            adam_t=0,
            soft_j=0,
            retries=0,
            last_loss=math.nan,
        )

    @classmethod
    def for_space(cls, space: Any, *, seed: int = 0, **options: Any) -> FrankWolfe:
        """Build from an ``FWPoolSpace`` (pool size, variant and iterations taken from it)."""
        lo, hi = space.bounds
        fixed = {
            "n_members": space.n_members,
            "variant": space.variant,
            "granularity": space.granularity,
        }
        for key, value in fixed.items():
            if key in options and options[key] != value:
                raise UserInputError(
                    f"frank_wolfe: driver.options.{key} {options[key]!r} "
                    f"disagrees with the pool space's {value!r}"
                )
        opts = {"iterations": space.iterations, **options, **fixed}
        if space.variant == "ties" and opts["iterations"] != space.iterations:
            raise UserInputError(
                f"frank_wolfe: driver.options.iterations {opts['iterations']} "
                f"disagrees with the TIES pool space's {space.iterations}"
            )
        return cls(space.dim, lo, hi, space.x0(), seed=seed, **opts)

    # ---- ask ------------------------------------------------------------------------------------
    def _genes(self) -> np.ndarray:
        s = self.state
        w = s.w if self.params.variant != "soft" or not s.mask.any() else s.w * s.mask
        x = w.reshape(-1)
        if self.params.variant == "ties":
            x = np.concatenate([x, s.hist.reshape(-1)])
        return np.clip(x, self.lower, self.upper)

    def _final(self) -> bool:
        p, s = self.params, self.state
        total = p.iterations * (p.soft_steps if p.variant == "soft" else 1)
        return (s.soft_j if p.variant == "soft" else s.t) >= total

    def _meta(self) -> dict[str, Any]:
        s = self.state
        return {
            "phase": "final" if self._final() else "step",
            "t": s.t,
            "gamma": L.gamma(s.t, self.params.step_size),
            "loss": s.last_loss,
        }

    def _request(self, index: int, x: np.ndarray) -> GradientRequest:
        return GradientRequest(index, np.asarray(x, dtype=float), self.objective, step=0)

    def _done_reason(self, s: FWState) -> str:
        return "iterations done"

    # ---- tell -----------------------------------------------------------------------------------
    def _step(self, s: FWState, al: Alignment) -> FWState:
        s = replace(s, last_loss=al.loss)
        return (
            self._soft_update(s, al) if self.params.variant == "soft" else self._hard_update(s, al)
        )

    def _select(self, al: Alignment) -> np.ndarray:
        p = self.params
        return L.select(al, granularity=p.granularity, align_on=p.align_on, guard=p.guard)

    def _hard_update(self, s: FWState, al: Alignment) -> FWState:
        p = self.params
        sel = self._select(al)
        a = min(1.0, p.lam * L.gamma(s.t, p.step_size))
        mask = s.mask.copy()
        mask[np.flatnonzero(sel >= 0), sel[sel >= 0]] = 1.0
        if p.variant == "ties":
            hist = s.hist.copy()
            hist[s.t] = np.r_[a, sel.astype(float)]
            return replace(s, t=s.t + 1, hist=hist, mask=mask)
        return replace(s, t=s.t + 1, w=L.fw_step(s.w, sel, a), mask=mask)

    def _soft_update(self, s: FWState, al: Alignment) -> FWState:
        """FW-Soft: Adam on the collected coefficients; every ``soft_steps`` tells, an LMO."""
        p = self.params
        w, mask, m, v, adam_t = s.w, s.mask, s.m, s.v, s.adam_t
        if mask.any():  # dLoss/dW[G, k] = <g_G, tau_kG>: exactly what the job streamed
            grad = al.tv_dots.T * mask
            adam_t += 1
            w, m, v = adam_step(w, grad, m, v, adam_t, p.soft_lr)
            w = np.clip(w, 0.0, 1.0) * mask
        t = s.t
        if s.soft_j % p.soft_steps == 0:
            sel = self._select(al)
            rows = np.flatnonzero(sel >= 0)
            new = mask[rows, sel[rows]] == 0
            mask = mask.copy()
            w = np.array(w, copy=True)
            w[rows[new], sel[rows][new]] = p.soft_init
            mask[rows, sel[rows]] = 1.0
            t += 1
        return replace(s, w=w, mask=mask, m=m, v=v, adam_t=adam_t, t=t, soft_j=s.soft_j + 1)


def _n_groups(dim: int, p: FWParams) -> int:
    """Tensor groups G from the genes' length: G*K, or G*K + T*(1+G) for TIES."""
    k, t = p.n_members, p.iterations
    num, den = (dim, k) if p.variant != "ties" else (dim - t, k + t)
    if num < den or num % den:
        raise UserInputError(
            f"frank_wolfe: {dim} genes do not fit a {p.variant} pool of {k} members"
            + (f" and {t} iterations" if p.variant == "ties" else "")
            + "; build the driver with FrankWolfe.for_space(space)"
        )
    return num // den
