"""Sparsifiers of task vectors, the first half of generalized task arithmetic.

- magnitude: keep the top-``density`` fraction by |τ| (TIES-Merging, Yadav et al. 2023).
- random: Bernoulli(density) keep mask (DARE, Yu et al. 2024, "Language Models are Super Mario").
- magnitude_outliers: drop the top ``gamma`` fraction, then the smallest, to reach ``density``
  (Model Breadcrumbs, Davari & Belilovsky 2024).
- della_magprune: keep probabilities rising linearly with the magnitude rank within each row,
  in [density − ε, density + ε] (DELLA-Merging, Deep et al. 2024).

``rescale`` restores the L1 norm of the task vector after masking, as mergekit 0.1.5 does (the
DARE paper's 1/p rescale has the same expectation); the norms are exact (exact_l1.py), so the
factor is the same whatever the summation order.

Top-k by magnitude is a selection, not a sort: ``top_k_mask`` finds the k-th largest magnitude
exactly (a strided sample brackets it, ``kthvalue`` finishes on the few elements inside the
bracket) and keeps everything at or above it — O(n) passes instead of mergekit's O(n log n)
``argsort`` (11 s vs 0.3 s on a 16M-element embedding on 2 cores). The kept set is the same
whenever no ties straddle the threshold. Tie rule at the threshold, mergekit 0.1.5's exactly:
``magnitude`` keeps ``torch.argsort(|τ|, descending=True)[:k]``, and torch's CPU argsort is not
stable (an introsort: which of the entries equal to the k-th largest magnitude v come first
depends on the whole tensor). Task vectors of real bf16 weights are full of equal magnitudes,
so when entries equal to v straddle k (v > 0), the kept ones are read off that same argsort
(``argsort_ties``: O(n log n), only then). Where v = 0 the tied entries are zeros, which are
the same kept or not: the lowest flat indices are kept (no sort).

Every sparsifier takes ``aids`` (``Aids``): optional providers of parts it computes, which
the fast path (``evomerge.merge.ops._fast``) fills with cached or faster ones — a search worker's
per-expert ascending |τ| (which turns ``top_k`` into a lookup), ``rank01``
(DELLA's rank fractions), ``draw`` (the generator's uniforms, cached or drawn in C), ``l1``
(Σ|τ|) and ``norm`` (the exact L1 norm in C). Random keep masks are ``u < p`` over uniforms u
drawn with the seeded generator: the same bits ``torch.bernoulli(p, generator)`` gives, so a
cached u serves every keep rate. With or without aids the result is the same, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from evomerge.errors import UserInputError
from evomerge.merge.ops.exact_l1 import l1_norm

Lazy = Callable[[], torch.Tensor]  # computed only if the operator needs it
Draw = Callable[[tuple[int, ...]], torch.Tensor]  # shape -> float32 uniforms in [0, 1), CPU
Norm = Callable[[torch.Tensor], torch.Tensor]  # the exact L1 norm (exact_l1.l1_norm's bits)
TopKRule = Callable[[torch.Tensor, int], "TopK"]  # (flat magnitudes, k) -> top_k's rule


@dataclass(frozen=True)
class Aids:
    """Providers of parts a sparsifier computes, each giving exactly what it would compute
    itself (None: it does): ``top_k(mag, k)`` the rule keeping the k largest of the flat
    magnitudes ``mag`` (``top_k``'s), ``rank01`` DELLA's rank
    fractions of τ's rows, ``draw`` the generator's next uniforms, ``l1`` Σ|τ| before masking,
    ``norm`` the exact L1 norm of any tensor."""

    top_k: TopKRule | None = None
    rank01: Lazy | None = None
    draw: Draw | None = None
    l1: Lazy | None = None
    norm: Norm | None = None


EAGER = Aids()

EPS = 1e-7  # below it an L1 norm counts as zero: no rescale


def _rescaled(
    tensor: torch.Tensor,
    mask: torch.Tensor,
    rescale: bool,
    l1: Lazy | None = None,
    inplace: bool = False,
    norm: Norm | None = None,
) -> torch.Tensor:
    """``tensor * mask`` (L1-rescaled); ``l1``: the cached ``tensor.abs().sum()``; ``inplace``:
    the caller owns ``tensor`` (a fresh τ), which is masked in place (no new buffer)."""
    norm = norm or l1_norm
    before = (l1() if l1 is not None else norm(tensor)) if rescale else None
    # a bool or 0/1 mask: the same bits either way
    masked = tensor.mul_(mask) if inplace else tensor * mask
    if before is None:
        return masked
    after = norm(masked)
    if before < EPS or after < EPS:
        return masked
    return masked.mul_(before / after)


def _float_mask(like: torch.Tensor) -> torch.Tensor:
    # Masks are built as float32 0/1 (``torch.lt(..., out=float)``): on CPU a bool-valued
    # comparison and a float × bool product are each ~10× slower than their float forms, and
    # x · 1.0, x · 0.0 are the bits of x · True, x · False.
    return torch.empty(like.shape, dtype=torch.float32, device=like.device)


def magnitude(
    tensor: torch.Tensor,
    density: float,
    rescale: bool,
    *,
    aids: Aids = EAGER,
    inplace: bool = False,
) -> torch.Tensor:
    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    k = max(1, int(density * tensor.numel()))
    mag = tensor.abs().reshape(-1)
    keep = _largest(mag, k, aids.top_k).reshape(tensor.shape)
    return _rescaled(tensor, keep, rescale, inplace=inplace, norm=aids.norm)


def _largest(mag: torch.Tensor, k: int, rule: TopKRule | None) -> torch.Tensor:
    """float32 0/1 mask of the ``k`` largest of the flat ``mag`` (ties: lowest index), any k."""
    n = mag.numel()
    if k <= 0:
        return torch.zeros_like(mag, dtype=torch.float32)
    if k >= n:
        return torch.ones_like(mag, dtype=torch.float32)
    return (rule or top_k)(mag, k).mask(mag, dtype=torch.float32)


def top_k_mask(mag: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest entries of the flat tensor ``mag`` (ties: lowest index)."""
    if k >= mag.numel():
        return torch.ones_like(mag, dtype=torch.bool)
    return top_k(mag, k).mask(mag)


@dataclass(frozen=True)
class TopK:
    """The k largest entries of a flat tensor as a rule that can be applied block by block:
    keep |x| ≥ v at flat indices below ``split``, |x| > v from ``split`` on; with ``ties``
    (mergekit's argsort order, ``argsort_ties``) keep |x| > v and the flat indices ``ties``."""

    v: torch.Tensor
    split: int
    value: float | None = None  # v as a Python float, where it came for free (CPU lookups)
    ties: torch.Tensor | None = None  # ascending flat indices of the kept entries equal to v

    def threshold(self) -> tuple[float, int]:
        """(v, split) as Python numbers (the fused kernel's arguments)."""
        return (float(self.v) if self.value is None else self.value), self.split

    def mask(
        self, mag: torch.Tensor, start: int = 0, dtype: torch.dtype = torch.bool
    ) -> torch.Tensor:
        """Keep mask for ``mag``, the magnitudes at flat indices [start, start + len(mag)),
        as ``dtype`` (0/1: float32 masks are built and applied ~10× faster on CPU)."""
        if self.ties is not None:
            return self._mask_ties(mag, start, dtype)
        q = min(max(self.split - start, 0), mag.numel())
        keep = torch.empty_like(mag, dtype=dtype)
        if q == mag.numel():
            return torch.ge(mag, self.v, out=keep)
        if q == 0:
            return torch.gt(mag, self.v, out=keep)
        torch.ge(mag[:q], self.v, out=keep[:q])
        torch.gt(mag[q:], self.v, out=keep[q:])
        return keep

    def mask_at(self, mag: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """float32 0/1 keep mask of the magnitudes ``mag`` at the flat indices ``pos``."""
        if self.ties is not None:
            keep = torch.gt(mag, self.v) | _members(pos, self.ties)
        else:
            keep = torch.where(pos < self.split, mag >= self.v, mag > self.v)
        return keep.to(torch.float32)

    def _mask_ties(self, mag: torch.Tensor, start: int, dtype: torch.dtype) -> torch.Tensor:
        keep = torch.gt(mag, self.v, out=torch.empty_like(mag, dtype=dtype))
        ties = self.ties
        bounds = torch.tensor([start, start + mag.numel()], device=ties.device)  # CUDA too
        lo, hi = torch.searchsorted(ties, bounds).tolist()
        keep[ties[lo:hi] - start] = 1
        return keep


def _members(pos: torch.Tensor, ascending: torch.Tensor) -> torch.Tensor:
    """``torch.isin(pos, ascending)`` for a sorted ``ascending``: a binary search per entry
    (isin sorts both: ~5× slower on a TIES tensor's kept ties)."""
    if ascending.numel() == 0:
        return torch.zeros_like(pos, dtype=torch.bool)
    at = torch.searchsorted(ascending, pos).clamp_(max=ascending.numel() - 1)
    return ascending[at] == pos


def argsort_ties(mag: torch.Tensor, k: int, v: torch.Tensor, order: Lazy | None = None) -> TopK:
    """mergekit's rule when entries equal to ``v`` (the k-th largest) straddle k: those among
    ``torch.argsort(mag, descending=True)[:k]`` (``order``: that argsort, if cached)."""
    top = (order() if order is not None else descending_order(mag))[:k]
    ties = top[mag[top] == v].to(torch.int64).sort().values
    return TopK(v, 0, float(v), ties)


def descending_order(mag: torch.Tensor) -> torch.Tensor:
    """mergekit's ``torch.argsort(w, descending=True)`` of the flat magnitudes (float32 on
    CPU, as mergekit sorts them): the order its top-k keeps."""
    return torch.argsort(mag.float() if mag.device.type == "cpu" else mag, descending=True)


def top_k(mag: torch.Tensor, k: int) -> TopK:
    """The rule keeping exactly the ``k`` (< n) largest of the flat tensor ``mag``."""
    v, greater, equal = _kth(mag, k)
    need = k - greater  # entries equal to v that are kept
    if need >= equal:
        return TopK(v, mag.numel())
    if v > 0:
        return argsort_ties(mag, k, v)
    return TopK(v, nth_equal(mag, v, need) + 1)  # zeros: the first `need` by index


_BLOCK = 1 << 18


def nth_equal(mag: torch.Tensor, v: torch.Tensor, nth: int) -> int:
    """Flat index of the ``nth`` (1-based) entry equal to ``v``, scanning blocks from the start
    (stops early, and a block's ``nonzero`` is cheap where a whole-tensor one is not)."""
    seen = 0
    for s in range(0, mag.numel(), _BLOCK):
        eq = mag[s : s + _BLOCK] == v
        c = int(torch.count_nonzero(eq))
        if seen + c >= nth:
            return s + int(eq.nonzero()[nth - seen - 1])
        seen += c
    raise ValueError(f"fewer than {nth} entries equal {float(v)}")


_SAMPLE = 1 << 16


def kth_largest(mag: torch.Tensor, k: int) -> torch.Tensor:
    """The exact k-th largest value of the flat tensor ``mag`` (1 ≤ k ≤ n), as a 0-d tensor."""
    return _kth(mag, k)[0]


def _kth(mag: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
    """(v = the k-th largest of ``mag``, #entries > v, #entries == v).

    ``kthvalue`` over all n elements is single-threaded and copies; a strided sample gives a
    bracket [lo, hi] that holds the answer with overwhelming probability, and the answer is then
    the right order statistic of the few elements inside it (whose counts also give the ties).
    When the sample misleads (adversarial layouts), the full ``kthvalue`` runs: always exact.
    """
    n = mag.numel()
    r = n - k  # ascending 0-based rank of the answer
    if n > 8 * _SAMPLE:
        sample = mag[:: n // _SAMPLE].contiguous()
        m = sample.numel()
        j = r * m // n
        d = 4 * int((m * (r / n) * (1 - r / n)) ** 0.5) + 64
        inside = torch.ones_like(mag, dtype=torch.bool)  # open-ended at the extremes
        below = 0
        if j - d > 0:  # (kthvalue on the sample: torch's sort of 64k floats is 20× slower)
            inside = mag >= torch.kthvalue(sample, j - d + 1).values
            below = n - int(torch.count_nonzero(inside))
        if j + d < m - 1:
            inside.logical_and_(mag <= torch.kthvalue(sample, j + d + 1).values)
        if below <= r:
            cand = mag[inside]
            if r - below < cand.numel():
                v = torch.kthvalue(cand, r - below + 1).values
                above = n - below - cand.numel()
                return v, above + int(torch.count_nonzero(cand > v)), _count(cand == v)
    v = torch.kthvalue(mag, r + 1).values
    return v, _count(mag > v), _count(mag == v)


def _count(mask: torch.Tensor) -> int:
    return int(torch.count_nonzero(mask))  # (a bool .sum() is 10× slower)


def magnitude_outliers(
    tensor: torch.Tensor,
    density: float,
    gamma: float,
    rescale: bool,
    *,
    aids: Aids = EAGER,
    inplace: bool = False,
) -> torch.Tensor:
    """Keep ascending magnitude ranks [bottom, bottom + keep): the ``n - bottom`` largest minus
    the ``n - bottom - keep`` largest, two top-k rules (ties: lowest index ranks higher)."""
    if density >= 1:
        return tensor
    n = tensor.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)  # shrink the outlier cut when density asks for it
    mag = tensor.abs().reshape(-1)
    mask = _largest(mag, n - bottom, aids.top_k)
    mask.sub_(_largest(mag, n - bottom - keep, aids.top_k))  # 1 − 1, 1 − 0, 0 − 0: exact
    return _rescaled(tensor, mask.reshape(tensor.shape), rescale, inplace=inplace, norm=aids.norm)


def uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """float32 uniforms from the recipe's generator, drawn on the CPU (same bits anywhere)."""
    if generator is None:
        raise UserInputError("a stochastic operator needs a generator (recipe seed)")
    return torch.rand(shape, generator=generator, dtype=torch.float32)


def _keep_mask(u: torch.Tensor, probs: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli(probs) as ``u < probs`` (torch.bernoulli's own rule and stream)."""
    return torch.lt(u, probs.detach().float().cpu(), out=_float_mask(u)).to(like.device)


def random(
    tensor: torch.Tensor,
    density: float,
    rescale: bool,
    generator: torch.Generator | None,
    *,
    aids: Aids = EAGER,
    inplace: bool = False,
) -> torch.Tensor:
    if density >= 1:
        return tensor
    shape = tuple(tensor.shape)
    u = aids.draw(shape) if aids.draw else uniform(shape, generator)
    mask = _keep_mask(u, torch.tensor(density, dtype=torch.float32), tensor)
    return _rescaled(tensor, mask, rescale, aids.l1, inplace, aids.norm)


def della_rank01(rows: torch.Tensor) -> torch.Tensor:
    """Each entry's magnitude rank within its row, scaled to [0, 1] (DELLA's keep schedule)."""
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).to(rows.dtype) + 1
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    return ((ranks - lo) / (hi - lo)).clamp(0, 1)


def della_magprune(
    tensor: torch.Tensor,
    density: float,
    epsilon: float,
    rescale: bool,
    generator: torch.Generator | None,
    *,
    aids: Aids = EAGER,
    inplace: bool = False,
) -> torch.Tensor:
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise UserInputError(
            f"della: epsilon={epsilon} with density={density} leaves (0, 1); "
            "choose epsilon < min(density, 1 - density)"
        )
    rows = tensor if tensor.dim() >= 2 else tensor.unsqueeze(0)
    r01 = aids.rank01() if aids.rank01 is not None else della_rank01(rows)
    probs = (density - epsilon) + r01 * 2 * epsilon
    shape = tuple(rows.shape)
    u = aids.draw(shape) if aids.draw else uniform(shape, generator)
    mask = _keep_mask(u, probs, rows)
    return _rescaled(rows, mask, rescale, aids.l1, inplace, aids.norm).reshape(tensor.shape)
