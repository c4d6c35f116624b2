"""AdaMerging: merge coefficients learned by entropy minimisation on unlabelled inputs.

Yang, Wang, Shen, Liu, Guo, Wang, Tao, "AdaMerging: Adaptive Model Merging for Multi-Task
Learning" (ICLR 2024; reference code EnnengYang/AdaMerging). With the pretrained theta_0 and task
vectors tau_k = theta_k - theta_0 (k = 1..K):

* task-wise (Eq. 4):  theta = theta_0 + sum_k lambda_k tau_k
* layer-wise (Eq. 5): theta^l = theta_0^l + sum_k lambda_k^l tau_k^l  (l: every parameter
  tensor, as the reference code's per-parameter coefficients)
* objective (Eq. 3):  min_lambda sum_k sum_{x in B_k} H(f(x; theta)),  H = -sum_c p_c log p_c,
  B_k a batch of unlabelled test inputs of task k (``evomerge.fitness.entropy_loss``).

lambda starts at 0.3, is trained by Adam (lr 1e-3, 500 iterations, 16 inputs per task) and is
clipped to [0, 1] where it is used, as in the reference code (raw lambda is the Adam variable;
the clip's gradient is zero outside [0, 1]). AdaMerging++ (TIES-trimmed task vectors) is not
implemented.

Like ``frank_wolfe`` this is not a black-box driver: it pairs with the ``fw_pool`` space
(genes = lambda, groups x experts, ``granularity: task`` or ``layer``), and each candidate but the
last wants the entropy gradient at its lambda (``Candidate.wants["gradient"]``, a
``GradientRequest`` for the ``objective`` at this step's batch). A worker computes it beside the
fitness (``evomerge.workers.gradient_job``: ``Alignment.tv_dots`` = dH/dlambda) and ``tell``
receives it in ``wanted`` (``drivers.pool_gradient``). One candidate per ``ask`` (each is one
Adam iterate); its fitness is only used for ``best``. After ``steps`` updates the final lambda is
asked once more, scored, and the driver stops; ``coefficients`` is AdaMerging's answer (the last
iterate, not the best-scored one).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers.adamerging_state import AdaParams, AdaState
from evomerge.drivers.base import register_driver
from evomerge.drivers.pool_gradient import PoolGradientDriver, adam_step
from evomerge.errors import UserInputError
from evomerge.fitness.entropy_loss import EntropyObjective
from evomerge.workers.gradient import Alignment, GradientRequest


@register_driver
class AdaMerging(PoolGradientDriver):
    name: ClassVar[str] = "adamerging"
    options_cls: ClassVar[type] = AdaParams  # the dataclass driver.options are parsed into

    @classmethod
    def misfit(cls, space: Any) -> str | None:
        if space.kind != "fw_pool" or space.variant != "task_arithmetic":
            return "AdaMerging learns task-arithmetic coefficients (space kind fw_pool, variant task_arithmetic)"
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
        self.objective = EntropyObjective.parse(p.objective)
        k = p.n_members
        if dim < k or dim % k:
            raise UserInputError(
                f"adamerging: {dim} genes are not (groups x {k} experts); "
                "build the driver with AdaMerging.for_space(space) on an fw_pool space"
            )
        self.n_groups = dim // k
        zeros = np.zeros((self.n_groups, k))
        lam = np.full((self.n_groups, k), float(p.init))
        self.state = AdaState(
            t=0,
            phase="run",
            lam=lam,
            m=zeros.copy(),
            v=zeros.copy(),
            losses=np.zeros(0),
            retries=0,
        )

    @classmethod
    def for_space(cls, space: Any, *, seed: int = 0, **options: Any) -> AdaMerging:
        """Build from an ``FWPoolSpace`` (experts and granularity taken from it)."""
        if getattr(space, "variant", None) != "task_arithmetic":
            raise UserInputError(
                "adamerging: the space must be kind fw_pool with variant task_arithmetic "
                f"(got {getattr(space, 'variant', type(space).__name__)!r})"
            )
        if "n_members" in options and options["n_members"] != space.n_members:
            raise UserInputError(
                f"adamerging: driver.options.n_members {options['n_members']} disagrees with "
                f"the space's {space.n_members} experts"
            )
        lo, hi = space.bounds
        opts = {**options, "n_members": space.n_members}
        return cls(space.dim, lo, hi, space.x0(), seed=seed, **opts)

    # ---- ask ------------------------------------------------------------------------------------
    def _clip(self, lam: np.ndarray) -> np.ndarray:
        return np.clip(lam.reshape(-1), np.maximum(self.lower, 0.0), np.minimum(self.upper, 1.0))

    @property
    def coefficients(self) -> np.ndarray:
        """The current (after ``stop``: final) lambda as used in the merge, (groups, experts)."""
        return self._clip(self.state.lam).reshape(self.n_groups, self.params.n_members)

    def _genes(self) -> np.ndarray:
        return self._clip(self.state.lam)

    def _final(self) -> bool:
        return self.state.t >= self.params.steps

    def _meta(self) -> dict[str, Any]:
        s = self.state
        last = float(s.losses[-1]) if len(s.losses) else math.nan
        return {"phase": "final" if self._final() else "step", "t": s.t, "loss": last}

    def _request(self, index: int, x: np.ndarray) -> GradientRequest:
        x = np.asarray(x, dtype=float)
        return GradientRequest(index, x, self.objective, self.state.t, bool(self.params.stream))

    def _done_reason(self, s: AdaState) -> str:
        return f"{s.t} Adam steps done"

    # ---- tell -----------------------------------------------------------------------------------
    def _step(self, s: AdaState, al: Alignment) -> AdaState:
        # dH/dlambda[G, k] = <g_G, tau_kG>; the clip passes the gradient only inside [0, 1]
        inside = (s.lam >= 0.0) & (s.lam <= 1.0)
        grad = al.tv_dots.T * inside
        lam, m, v = adam_step(s.lam, grad, s.m, s.v, s.t + 1, self.params.lr)
        return replace(s, t=s.t + 1, lam=lam, m=m, v=v, losses=np.r_[s.losses, al.loss])
