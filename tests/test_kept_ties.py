"""mergekit's kept ties at the top-k threshold without the argsort (``_fast/kept_ties.py``,
``tie_select`` in ``_fused_gta.c``): the entries equal to the k-th largest |τ| that
``torch.argsort(|τ|, descending=True)[:k]`` holds (``sparsify.argsort_ties``, the eager rule),
for every size the sort treats differently — its insertion-sort threshold, the partition's
blocks, many levels, its depth limit's heap sort — and with several models on threads."""

from __future__ import annotations

import pytest
import torch

from evomerge.merge.ops import sparsify
from evomerge.merge.ops._fast import fused_gta, kept_ties
from tests.helpers.std_sort import killer, std_sort

pytestmark = pytest.mark.skipif(fused_gta.library() is None, reason="no C compiler here")


def _eager(mag: torch.Tensor, k: int) -> tuple[float, torch.Tensor]:
    """(v, the kept ties) by the eager rule: the argsort itself."""
    v = torch.sort(mag, descending=True).values[k - 1]
    return float(v), sparsify.argsort_ties(mag, k, v).ties


def _tie_heavy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert, base) whose |τ| takes few values: ties at every threshold."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(n, generator=g) * 64).round() / 64
    return base + (torch.randn(n, generator=g) * 4).round() / 64, base


def test_this_torch_argsort_is_reproduced():
    """The once-per-process check passes here (else every other test below would only see the
    argsort fallback), and fails for a sort that keeps other ties (a stable one)."""
    assert kept_ties.reproduces_argsort()
    stable = lambda x, descending=False: torch.sort(x, descending=descending, stable=True).indices  # noqa: E731
    lib = fused_gta.library()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "argsort", stable)
        assert not all(kept_ties._agrees(lib, n, seed) for n, seed in kept_ties._PROBES)


@pytest.mark.parametrize("n", [17, 18, 255, 257, 600, 5_000, 1 << 17])
def test_kept_ties_are_the_argsorts(n):
    t, base = _tie_heavy(n, seed=n)
    for b in (base, None):
        mag = (t - b).abs() if b is not None else t.abs()
        for k in sorted({1, 2, n // 7, n // 2, n - n // 5, n - 2, n - 1}):
            v, want = _eager(mag, k)
            if v == 0 or want.numel() == int((mag == v).sum()):
                continue  # no ties straddle a v > 0: the rule needs no argsort
            got = kept_ties.kept_ties(t, b, k, v)
            assert torch.equal(got, want), (n, k, b is None)


def test_depth_limit_heap_sort_is_followed():
    """McIlroy's adversary builds keys on which std::sort runs out of depth and heap-sorts a
    range full of equal keys: the kept ties there are heap sort's (the model of std::sort the
    keys come from is torch's argsort on them, permutation for permutation)."""
    n = 400
    keys = killer(n)
    mag = torch.tensor(keys, dtype=torch.float32)
    order, heaps = list(range(n)), []
    std_sort(order, lambda x, y: keys[x] > keys[y], lambda f, last: heaps.append((f, last)))
    assert order == torch.argsort(mag, descending=True).tolist()
    (first, last), *_ = heaps
    assert last - first > 300 and len(set(keys[i] for i in order[first:last])) < 10
    for k in range(first + 1, last, 7):
        v, want = _eager(mag, k)
        assert torch.equal(kept_ties.kept_ties(mag, None, k, v), want), k


def test_several_models_at_once_over_threads():
    """A tensor's models find their kept ties on threads, one model a thread: each the same as
    alone."""
    n = 1 << 16
    base = _tie_heavy(n, seed=5)[1]
    experts = [_tie_heavy(n, seed=s)[0] for s in (6, 7, 8)]
    ks = [n // 3, n // 2, n - 10]
    requests = [(t, base, k, _eager((t - base).abs(), k)[0]) for t, k in zip(experts, ks)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        found = kept_ties.kept_ties_all(requests)
    finally:
        torch.set_num_threads(before)
    for (t, b, k, _), got in zip(requests, found):
        assert torch.equal(got, _eager((t - b).abs(), k)[1])


def test_fallback_is_the_argsort(monkeypatch):
    """Where the check fails the rule comes from the argsort: the same kept set."""
    from evomerge.merge.ops._fast.top_k import argsort_rule

    t, base = _tie_heavy(3_000, seed=9)
    k = 1_500
    v, want = _eager((t - base).abs(), k)
    monkeypatch.setattr(kept_ties, "_checked", False)
    assert kept_ties.kept_ties(t, base, k, v) is None
    assert torch.equal(argsort_rule(t, base, k, v).ties, want)
