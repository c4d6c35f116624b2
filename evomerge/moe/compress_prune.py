"""How MC-SMoE prunes the sparse parts S of its compressed experts during fine-tuning (Li et al.,
ICLR 2024, arXiv:2310.01334; as the authors' code does it: ``LoSparsePruner`` in
``mcsmoe/pruning/losparse.py``, PLATON's sensitivity, Zhang et al. 2022, without its
uncertainty term, which their setting switches off with beta2 = 1).

- Sensitivity of an entry s of S: |s * dL/ds| after each optimizer step, smoothed by an
  exponential moving average with beta1 = 0.85. As in that code the average taken at step t
  folds in the sensitivity measured at step t - 1 (the newest one joins at the next step).
- Structured: each row's score is the mean of its entries' (rows of the (out, in) matrix, i.e.
  an output unit of the matrix), so whole rows go.
- Global: one threshold over the rows of every S matrix of the model (every layer, expert and
  matrix kind), counted in entries: the rows whose score falls below the k-th smallest entry
  score, k = floor(n * (1 - keep)), are zeroed.
- Schedule (cubic): keep = 1 for the first ``warmup`` steps (nothing pruned), then
  keep = final + (1 - final) * (1 - (t - warmup) / (T - 5 warmup))**3, and keep = final for the
  last 4 ``warmup`` steps (the authors' ``initial_warmup = 1``, ``final_warmup = 4``).
"""

from __future__ import annotations

import torch

BETA1 = 0.85  # the authors' LoSparseConfig.beta1
INITIAL_WARMUP, FINAL_WARMUP = 1, 4  # in units of ``warmup`` steps, as the authors' config


def keep_fraction(step: int, total: int, final: float, warmup: int) -> tuple[float, bool]:
    """The share of S entries kept after ``step`` (0-based) of ``total``, and whether to mask."""
    start, end = INITIAL_WARMUP * warmup, total - FINAL_WARMUP * warmup
    if step <= start:
        return 1.0, False
    if step > end:
        return final, True
    left = 1 - (step - start) / (total - (INITIAL_WARMUP + FINAL_WARMUP) * warmup)
    return final + (1.0 - final) * left**3, True


class RowPruner:
    """Sensitivity scores and row masks for a set of named S matrices ([E, out, in] each)."""

    def __init__(self, sparse: dict[str, torch.nn.Parameter]):
        self.sparse = sparse
        self.latest = {n: torch.zeros_like(p) for n, p in sparse.items()}
        self.average = {n: torch.zeros_like(p) for n, p in sparse.items()}
        self.kept = {n: torch.ones(p.shape[:-1], dtype=torch.bool) for n, p in sparse.items()}

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step, before the gradients are cleared."""
        for n, p in self.sparse.items():
            self.average[n] = BETA1 * self.average[n] + (1 - BETA1) * self.latest[n]
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            self.latest[n] = (p * grad).abs()

    @torch.no_grad()
    def mask(self, keep: float) -> None:
        """Zero the rows below the global threshold that keeps a ``keep`` share of entries."""
        rows = {n: a.mean(dim=-1) for n, a in self.average.items()}  # [E, out]
        width = {n: p.shape[-1] for n, p in self.sparse.items()}
        entries = torch.cat([rows[n].flatten().repeat_interleave(width[n]) for n in rows])
        k = int(entries.numel() * (1 - keep))
        if keep <= 0.0:
            threshold = float("inf")  # everything goes (the authors' k = n would keep the top)
        elif k < 1:
            return  # nothing to prune yet
        else:
            threshold = torch.kthvalue(entries, k).values.item()
        for n, p in self.sparse.items():
            self.kept[n] = rows[n] >= threshold
            p.masked_fill_(~self.kept[n][..., None], 0.0)

    def kept_share(self) -> float:
        """The share of S entries the current masks keep."""
        kept = sum(int(m.sum()) * self.sparse[n].shape[-1] for n, m in self.kept.items())
        return kept / sum(p.numel() for p in self.sparse.values())
