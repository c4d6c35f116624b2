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

FW is not a black-box method: besides fitness, ``tell`` needs the gradient alignment of each
candidate. The driver says so with ``needs_gradient = True``; ``lmo_inputs(candidate)`` gives the
``LmoRequest`` a worker runs through ``evomerge.fw.job.run_lmo_job(space, request)``, and the
resulting ``Alignment`` goes back through ``tell(..., alignment=[...])`` (or
``candidate.meta["alignment"]``). All decisions are numpy on that small summary (``fw.lmo``),
so the driver state stays small and exactly resumable. One candidate per ``ask``: FW is
sequential. Where we depart from the reference code (hold instead of stepping to a zero
tensor; cosine with task vectors by default; TIES trimmed per tensor) the module says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from typing import Any, ClassVar

import numpy as np

from evomerge.drivers._common import parse_options
from evomerge.drivers.base import Candidate, Driver, register_driver
from evomerge.errors import UserInputError
from evomerge.fitness.result import EvalResult
from evomerge.fw import lmo as L
from evomerge.fw.state import FWParams, FWState


@register_driver
class FrankWolfe(Driver):
    name: ClassVar[str] = "frank_wolfe"
    options_cls: ClassVar[type] = FWParams  # the dataclass driver.options are parsed into
    #: One line per driver.options key, for docs/config.md (evomerge schema).
    option_help: ClassVar[dict[str, str]] = {
        "variant": "fixed by the fw_pool space",
        "granularity": "fixed by the fw_pool space",
        "iterations": "Frank-Wolfe iterations (default: the space's)",
        "step_size": "gamma_t = step_size * 2 / (t + 2)",
        "lam": "step scale (0.9 with variant ties, the paper's setting)",
        "align_on": "task_vector: cosine with task vectors; weights: with the weights (reference code)",
        "guard": "hold a group when stepping would not lower the linearised loss",
        "soft_steps": "variant soft: Adam steps on the coefficients per iteration",
        "soft_lr": "variant soft: Adam learning rate",
        "soft_init": "variant soft: a new member's initial coefficient",
        "max_retries": "failed gradient jobs in a row before the driver stops",
        "proxy": "FW's objective: {kind: lm or digits, data: labelled JSONL, n: items}",
    }
    needs_gradient: ClassVar[bool] = True

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
        super().__init__(dim, lower, upper, x0, seed=seed)
        self.params = p = parse_options(self.name, FWParams, options, {"n_members": "pool size"})
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
            next_index=0,
            pending=-1,
            retries=0,
            best_index=-1,
            best_f=-math.inf,
            best_x=self.x0.copy(),
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

    def ask(self, n: int | None = None) -> list[Candidate]:
        s = self.state
        if s.phase == "done":
            return []
        if s.pending < 0:
            self.state = s = replace(s, pending=s.next_index, next_index=s.next_index + 1)
        gam = L.gamma(s.t, self.params.step_size)
        meta = {
            "phase": "final" if self._final() else "step",
            "t": s.t,
            "gamma": gam,
            "loss": s.last_loss,
        }
        return [Candidate(index=s.pending, x=self._genes(), meta=meta)]

    def lmo_inputs(self, candidate: Candidate) -> Any:
        """The gradient job's input for ``candidate``; None when no gradient is needed (the
        last candidate only gets scored)."""
        from evomerge.fw.job import LmoRequest

        if candidate.index != self.state.pending or self._final():
            return None
        return LmoRequest(
            index=candidate.index,
            x=np.asarray(candidate.x, dtype=float),
            proxy=dict(self.params.proxy),
        )

    def alignments(self, candidates: Sequence[Candidate], space: Any) -> list[Any]:
        """Run the gradient job for each candidate in this process (the loop's FW hook);
        ``None`` where no gradient is needed. A failure comes back as a failed Alignment."""
        from evomerge.fw.job import run_lmo_job

        out = []
        for c in candidates:
            request = self.lmo_inputs(c)
            out.append(None if request is None else run_lmo_job(space, request, space.resolve))
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
        cand, f = self._check_tell(candidates, fitness)
        al = self._check_alignment(cand, alignment)
        s = self.state
        if not math.isnan(f) and f > s.best_f:
            s = replace(s, best_index=cand.index, best_f=f, best_x=np.asarray(cand.x, float))
        s = replace(s, pending=-1)
        self.state = s
        if self._final():
            self.state = replace(s, phase="done", stop_reason="iterations done")
        elif al is None or not al.ok:
            why = "no alignment" if al is None else (al.error or "non-finite alignment")
            retries = s.retries + 1
            done = retries > self.params.max_retries
            # a failed gradient leaves theta where it is: the next ask repeats it
            self.state = replace(
                s,
                retries=retries,
                phase="done" if done else "run",
                stop_reason=f"gradient failed {retries} times: {why}" if done else "",
            )
        elif self.params.variant == "soft":
            self.state = self._soft_update(replace(s, retries=0, last_loss=al.loss), al)
        else:
            self.state = self._hard_update(replace(s, retries=0, last_loss=al.loss), al)

    def _select(self, al: L.Alignment) -> np.ndarray:
        p = self.params
        return L.select(al, granularity=p.granularity, align_on=p.align_on, guard=p.guard)

    def _hard_update(self, s: FWState, al: L.Alignment) -> FWState:
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

    def _soft_update(self, s: FWState, al: L.Alignment) -> FWState:
        """FW-Soft: Adam on the collected coefficients; every ``soft_steps`` tells, an LMO."""
        p = self.params
        w, mask, m, v, adam_t = s.w, s.mask, s.m, s.v, s.adam_t
        if mask.any():  # dLoss/dW[G, k] = <g_G, tau_kG>: exactly what the job streamed
            grad = al.tv_dots.T * mask
            adam_t += 1
            w, m, v = L.adam_step(w, grad, m, v, adam_t, p.soft_lr)
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

    def _check_tell(self, candidates: Sequence[Candidate], fitness: Sequence[float]):
        if len(candidates) != len(fitness):
            raise ValueError(
                f"tell got {len(candidates)} candidates and {len(fitness)} fitness values"
            )
        if len(candidates) != 1:
            raise ValueError(
                f"frank_wolfe asks one candidate at a time; tell got {len(candidates)}"
            )
        cand = candidates[0]
        if self.state.pending < 0 or cand.index != self.state.pending:
            raise ValueError(
                f"tell got candidate {cand.index}, but the pending candidate is "
                f"{self.state.pending if self.state.pending >= 0 else 'none'}"
            )
        if not np.array_equal(np.asarray(cand.x, float), self._genes()):
            raise ValueError(f"candidate {cand.index}'s genes differ from what was asked")
        try:
            f = float(fitness[0])
        except (TypeError, ValueError):
            raise ValueError(
                f"fitness {fitness[0]!r} is not a number (use NaN for a failure)"
            ) from None
        if math.isinf(f):
            raise ValueError(f"fitness {f} is infinite; report a failed candidate as NaN")
        return cand, f

    def _check_alignment(
        self, cand: Candidate, alignment: Sequence[Any] | None
    ) -> L.Alignment | None:
        if alignment is not None and len(alignment) != 1:
            raise ValueError(f"tell got {len(alignment)} alignments for 1 candidate")
        al = alignment[0] if alignment is not None else (cand.meta or {}).get("alignment")
        if al is None:
            return None
        if isinstance(al, dict):
            al = L.Alignment.from_dict(al)
        if not isinstance(al, L.Alignment):
            raise ValueError(f"alignment must be an Alignment or its dict, got {type(al).__name__}")
        if al.error is None:
            al.check_shape(self.params.n_members, self.n_groups)
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
        d = asdict(self.state)
        return {
            "version": 1,
            "params": asdict(self.params),
            "n_groups": self.n_groups,
            "state": {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in d.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1 or "state" not in state:
            raise ValueError("not a frank_wolfe state dict (version 1)")
        if state["params"] != asdict(self.params) or state["n_groups"] != self.n_groups:
            raise ValueError(
                "the saved frank_wolfe state belongs to other driver options or "
                "another pool; resume with the run's original configuration"
            )
        saved = state["state"]
        missing = {f.name for f in fields(FWState)} - set(saved)
        if missing:
            raise ValueError(f"frank_wolfe state dict lacks {sorted(missing)}")
        self.state = FWState(
            **{
                k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                for k, v in saved.items()
            }
        )


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
