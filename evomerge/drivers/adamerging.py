"""AdaMerging: merge coefficients learned by entropy minimisation on unlabelled inputs.

Yang, Wang, Shen, Liu, Guo, Wang, Tao, "AdaMerging: Adaptive Model Merging for Multi-Task
Learning" (ICLR 2024; reference code EnnengYang/AdaMerging). With the pretrained theta_0 and task
vectors tau_k = theta_k - theta_0 (k = 1..K):

* task-wise (Eq. 4):  theta = theta_0 + sum_k lambda_k tau_k
* layer-wise (Eq. 5): theta^l = theta_0^l + sum_k lambda_k^l tau_k^l  (l: every parameter
  tensor, as the reference code's per-parameter coefficients)
* objective (Eq. 3):  min_lambda sum_k sum_{x in B_k} H(f(x; theta)),  H = -sum_c p_c log p_c,
  B_k a batch of unlabelled test inputs of task k (``evomerge.adamerging.objective``).

lambda starts at 0.3, is trained by Adam (lr 1e-3, 500 iterations, 16 inputs per task) and is
clipped to [0, 1] where it is used, as in the reference code (raw lambda is the Adam variable;
the clip's gradient is zero outside [0, 1]). AdaMerging++ (TIES-trimmed task vectors) is not
implemented.

Like ``frank_wolfe`` this is not a black-box driver: it pairs with the ``fw_pool`` space
(genes = lambda, groups x experts, ``granularity: task`` or ``layer``) and ``needs_gradient``:
the loop calls ``alignments(candidates, space)``, which runs ``run_entropy_job`` (the entropy
gradient streamed against the experts, ``Alignment.tv_dots`` = dH/dlambda) and tells it back as
``alignment``. One candidate per ``ask`` (each is one Adam iterate); its fitness is only used for
``best``. After ``steps`` updates the final lambda is asked once more, scored, and the driver
stops; ``coefficients`` is AdaMerging's answer (the last iterate, not the best-scored one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from typing import Any, ClassVar

import numpy as np

from evomerge.adamerging.job import EntropyRequest, run_entropy_job
from evomerge.adamerging.objective import EntropyObjective
from evomerge.adamerging.state import AdaParams, AdaState
from evomerge.drivers._common import check_tell, parse_options
from evomerge.drivers.base import Candidate, Driver, register_driver
from evomerge.errors import UserInputError
from evomerge.fitness.result import EvalResult
from evomerge.fw.lmo import Alignment, adam_step


@register_driver
class AdaMerging(Driver):
    name: ClassVar[str] = "adamerging"
    options_cls: ClassVar[type] = AdaParams  # the dataclass driver.options are parsed into
    #: One line per driver.options key, for docs/config.md (evomerge schema).
    option_help: ClassVar[dict[str, str]] = {
        "steps": "Adam updates of the coefficients (the paper's 500)",
        "lr": "Adam learning rate (the paper's 1e-3)",
        "init": "initial coefficient of every expert and group (the paper's 0.3)",
        "max_retries": "failed gradient jobs in a row before the driver stops",
        "stream": "stream the experts from disk each step (memory flat in their number)",
        "objective": "unlabelled inputs whose entropy is minimised, e.g. {kind: lm, tasks: [...]}",
    }
    needs_gradient: ClassVar[bool] = True

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
        super().__init__(dim, lower, upper, x0, seed=seed)
        self.params = p = parse_options(
            self.name, AdaParams, options, {"n_members": "number of experts"}
        )
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
            next_index=0,
            pending=-1,
            retries=0,
            best_index=-1,
            best_f=-math.inf,
            best_x=self._clip(lam),
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

    def ask(self, n: int | None = None) -> list[Candidate]:
        s = self.state
        if s.phase == "done":
            return []
        if s.pending < 0:
            self.state = s = replace(s, pending=s.next_index, next_index=s.next_index + 1)
        last = float(s.losses[-1]) if len(s.losses) else math.nan
        meta = {"phase": "final" if s.t >= self.params.steps else "step", "t": s.t, "loss": last}
        return [Candidate(index=s.pending, x=self._clip(s.lam), meta=meta)]

    def gradient_request(self, candidate: Candidate) -> EntropyRequest | None:
        """The gradient job's input for ``candidate``; None for the final (score-only) one."""
        if candidate.index != self.state.pending or self.state.t >= self.params.steps:
            return None
        x = np.asarray(candidate.x, dtype=float)
        return EntropyRequest(candidate.index, x, self.state.t, stream=bool(self.params.stream))

    def alignments(self, candidates: Sequence[Candidate], space: Any) -> list[Alignment | None]:
        """The loop's gradient hook: run the entropy job in this process, per candidate."""
        out: list[Alignment | None] = []
        for c in candidates:
            req = self.gradient_request(c)
            out.append(None if req is None else run_entropy_job(space, req, self.objective))
        return out

    # ---- tell -----------------------------------------------------------------------------------
    def tell(
        self,
        candidates: Sequence[Candidate],
        fitness: Sequence[float],
        details: Sequence[EvalResult | None] | None = None,
        *,
        alignment: Sequence[Any] | None = None,
    ) -> None:
        s = self.state
        values = check_tell(
            self.name, candidates, fitness, {s.pending: None} if s.pending >= 0 else {}
        )
        if len(values) != 1:
            raise UserInputError(f"adamerging asks one candidate at a time; tell got {len(values)}")
        cand, f = candidates[0], values[0]
        if not np.array_equal(np.asarray(cand.x, dtype=float), self._clip(s.lam)):
            raise UserInputError(
                f"adamerging.tell: candidate {cand.index}'s genes differ from the ask"
            )
        al = self._check_alignment(cand, alignment)
        if not math.isnan(f) and f > s.best_f:
            s = replace(s, best_index=cand.index, best_f=f, best_x=self._clip(s.lam))
        s = replace(s, pending=-1)
        if s.t >= self.params.steps:
            self.state = replace(s, phase="done", stop_reason=f"{s.t} Adam steps done")
        elif al is None or not al.ok:
            why = "no gradient told" if al is None else (al.error or "non-finite gradient")
            retries = s.retries + 1
            done = retries > self.params.max_retries
            # a failed gradient keeps lambda: the next ask repeats the same coefficients
            self.state = replace(
                s,
                retries=retries,
                phase="done" if done else "run",
                stop_reason=f"gradient failed {retries} times: {why}" if done else "",
            )
        else:
            self.state = self._adam(replace(s, retries=0), al)

    def _adam(self, s: AdaState, al: Alignment) -> AdaState:
        # dH/dlambda[G, k] = <g_G, tau_kG>; the clip passes the gradient only inside [0, 1]
        inside = (s.lam >= 0.0) & (s.lam <= 1.0)
        grad = al.tv_dots.T * inside
        lam, m, v = adam_step(s.lam, grad, s.m, s.v, s.t + 1, self.params.lr)
        return replace(s, t=s.t + 1, lam=lam, m=m, v=v, losses=np.r_[s.losses, al.loss])

    def _check_alignment(
        self, cand: Candidate, alignment: Sequence[Any] | None
    ) -> Alignment | None:
        if alignment is not None and len(alignment) != 1:
            raise UserInputError(f"adamerging.tell: {len(alignment)} alignments for 1 candidate")
        al = alignment[0] if alignment is not None else (cand.meta or {}).get("alignment")
        if al is None:
            return None
        if isinstance(al, dict):
            al = Alignment.from_dict(al)
        if not isinstance(al, Alignment):
            raise UserInputError(
                f"adamerging.tell: alignment must be an Alignment or its dict, got {type(al).__name__}"
            )
        if al.error is None:
            try:
                al.check_shape(self.params.n_members, self.n_groups)
            except ValueError as err:
                raise UserInputError(f"adamerging.tell: {err}") from None
        return al

    # ---- the rest of the contract ---------------------------------------------------------------
    def stop(self) -> bool:
        return self.state.phase == "done"

    @property
    def stop_reason(self) -> str:
        return self.state.stop_reason

    @property
    def best(self) -> tuple[Candidate, float] | None:
        s = self.state
        if s.best_index < 0:
            return None
        return Candidate(index=s.best_index, x=s.best_x.copy()), s.best_f

    def state_dict(self) -> dict[str, Any]:
        d = {
            k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in asdict(self.state).items()
        }
        return {"version": 1, "params": asdict(self.params), "n_groups": self.n_groups, "state": d}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != 1 or "state" not in state:
            raise UserInputError("not an adamerging state dict (version 1)")
        if state["params"] != asdict(self.params) or state["n_groups"] != self.n_groups:
            raise UserInputError(
                "the saved adamerging state belongs to other driver options or another set of "
                "experts; resume with the run's original configuration"
            )
        saved = state["state"]
        missing = {f.name for f in fields(AdaState)} - set(saved)
        if missing:
            raise UserInputError(f"adamerging state dict lacks {sorted(missing)}")
        self.state = AdaState(
            **{
                k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                for k, v in saved.items()
            }
        )
