"""mergekit's tie rule at the top-k threshold (``sparsify.argsort_ties``) without the argsort.

mergekit keeps ``torch.argsort(|τ|, descending=True)[:k]``; where entries equal to the k-th
largest magnitude v > 0 straddle k, which of them are kept depends on every comparison of
that sort, and the eager path sorts the whole tensor to find out (on real bf16 task vectors
almost every tensor: ~3/4 of a TIES merge). torch's CPU argsort of a 1-D float32 tensor is
libstdc++'s ``std::sort``, which only ever permutes inside the range it is working on, so the
kept set is decided by the ranges that hold position k: ``tie_select`` in ``_fused_gta.c`` does
``std::sort``'s own steps on those ranges only (~10× less work than the sort).

That holds for the torch this process runs (its build and standard library decide the sort),
so ``reproduces_argsort`` checks it once, on tie-heavy inputs against ``torch.argsort``
itself; elsewhere (another torch build, libc++) ``kept_ties`` answers None and the caller
sorts. Tests: tests/test_kept_ties.py.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch

from evomerge.merge.ops._fast import fused_gta

log = logging.getLogger(__name__)

_checked: bool | None = None


Request = tuple[torch.Tensor, torch.Tensor | None, int, float]  # src, base, k, v


def kept_ties(
    src: torch.Tensor, base: torch.Tensor | None, k: int, v: float
) -> torch.Tensor | None:
    """Ascending flat indices (int64) of the entries with |src − base| == v (|src| without a
    base) among ``torch.argsort(|src − base|, descending=True)[:k]``, 0 < k < n; None where
    this process's argsort is not the sort reproduced here (the caller then sorts)."""
    found = kept_ties_all([(src, base, k, v)])
    return None if found is None else found[0]


def kept_ties_all(requests: list[Request]) -> list[torch.Tensor] | None:
    """``kept_ties`` of each request (a TIES tensor's models), several at once: one request a
    thread, at most torch's thread count (each holds 8 bytes an entry meanwhile); a single
    request builds its pairs on every thread."""
    lib = fused_gta.library()
    if lib is None or not reproduces_argsort():
        return None
    for src, base, k, _ in requests:
        assert fused_gta.usable(src, [src] if base is None else [base], None)
        assert 0 < k < src.numel()
        if src.numel() >= 1 << 32:
            return None
    threads = min(torch.get_num_threads(), len(requests))
    if threads <= 1 or fused_gta.in_flight():
        return [_select(lib, *r, shared=True) for r in requests]
    found: list[torch.Tensor | None] = [None] * len(requests)
    left = iter(range(len(requests)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                j = next(left, None)
            if j is None:
                return
            found[j] = _select(lib, *requests[j], shared=False)

    # (ctypes and numpy's sort release the GIL: the requests run in parallel)
    helpers = [fused_gta._threads().submit(work) for _ in range(threads - 1)]
    work()
    for h in helpers:  # (one not started yet has nothing left to do: never wait for it)
        if not h.cancel():
            h.result()
    return found


def _select(
    lib, src: torch.Tensor, base: torch.Tensor | None, k: int, v: float, shared: bool
) -> torch.Tensor:
    """One request; ``shared``: build the pairs on every thread (else on this one)."""
    n = src.numel()
    pairs = np.empty(n, dtype=np.uint64)  # (|d|'s bits << 32 | index): 8 bytes an entry
    bptr, sptr, at = (None if base is None else base.data_ptr()), src.data_ptr(), pairs.ctypes.data
    if shared:
        chunks = fused_gta._chunks(n)
        fused_gta._parallel(lambda c, _: lib.tie_pairs(c[0], c[1], bptr, sptr, at), chunks, chunks)
    else:
        lib.tie_pairs(0, n, bptr, sptr, at)
    out = np.empty(k, dtype=np.int64)  # (pages never written cost nothing)
    vbits = int(np.array(v, dtype=np.float32).view(np.uint32))
    count = lib.tie_select(n, at, k, vbits, out.ctypes.data, k)
    return torch.from_numpy(np.sort(out[:count]))


def reproduces_argsort() -> bool:
    """Whether ``tie_select`` keeps what this process's ``torch.argsort`` keeps: checked once,
    on tie-heavy inputs of a few sizes (a different sort algorithm, or another version of
    libstdc++'s, keeps other ties on them)."""
    global _checked
    if _checked is None:
        lib = fused_gta.library()
        _checked = lib is not None and all(_agrees(lib, n, seed) for n, seed in _PROBES)
        if lib is not None and not _checked:
            log.info("torch.argsort is not libstdc++'s std::sort here: TIES ties use the argsort")
    return _checked


# (sizes on both sides of torch's parallel grain, 32,768 entries, where a build could switch sorts)
_PROBES = ((40, 0), (1000, 1), (5000, 2), (70_000, 3))


def _agrees(lib, n: int, seed: int) -> bool:
    g = torch.Generator().manual_seed(seed)
    mag = torch.randint(0, 12, (n,), generator=g).float()  # ~n/12 entries on each value
    order = torch.argsort(mag, descending=True)
    for k in (n // 7, n // 2, n - n // 5):
        top = order[:k]
        v = float(mag[top[-1]])
        want = top[mag[top] == v].sort().values
        if not torch.equal(_select(lib, mag, None, k, v, shared=True), want):
            return False
    return True
