"""The one-pass C kernel for generalized task arithmetic (``_fused_gta.c``), compiled on first
use and loaded with ctypes.

Why: on CPU the eager path streams each model's τ through ~8 elementwise torch kernels (sub,
abs, compare, mask, weight, vote, clamp, sum), so a TIES candidate cost ~9× one pass over the
experts' bytes. The kernel reads each input once and writes the output once, with the same
float32 operations in the same order, so the bits are the eager path's (tests/test_fused_gta.py
checks them against the eager path over the operators and edge cases).

It is an accelerator, never a requirement: without a C compiler, on a build error, on non-float32
or non-CPU tensors, or with ``EVOMERGE_FUSED=0``, the eager path runs and gives the same bits.
The shared object is cached under ``${EVOMERGE_CACHE:-~/.cache/evomerge}/kernels/`` keyed by the
source's hash and the compiler's version; it is built without ``-march=native`` so a cache on a
shared home directory works on every node of a cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from evomerge.errors import NonFiniteInput
from evomerge.merge.ops._fast.packed_uniform import Packed, below

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("_fused_gta.c")
# no FMA contraction and no fast-math: the eager path's roundings (see the C file's header)
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-std=c99"]
_FLAGS += ["-fPIC", "-shared", "-pthread"]
MAX_MODELS = 4
# below this many elements per thread a thread hand-off costs more than it saves
_MIN_CHUNK = 1 << 16
_CONSENSUS = {None: 0, "sum": 1, "count": 2}

_lib: ctypes.CDLL | None = None
_tried = False
_pool: ThreadPoolExecutor | None = None


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cache_dir() -> Path:
    root = os.environ.get("EVOMERGE_CACHE") or str(Path.home() / ".cache" / "evomerge")
    return Path(root) / "kernels"


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(_SOURCE.read_bytes() + version.encode() + " ".join(_FLAGS).encode())
    target = _cache_dir() / f"fused_gta_{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile beside the target, then rename: concurrent workers never load a half-written file
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        so = Path(tmp) / target.name
        subprocess.run(
            [cc, *_FLAGS, str(_SOURCE), "-o", str(so), "-lm"],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(so, target)
    return target


def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (disabled, no compiler, build failed: the eager path runs)."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("EVOMERGE_FUSED", "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        log.info("no C compiler found: generalized task arithmetic runs on the eager path")
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        log.warning("fused kernel build failed (%s); using the eager path", detail.strip()[:300])
        return None
    f = lib.gta_fused
    f.restype = None
    i64, i32, fp = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    f.argtypes = [i64, i64, i32, fp, fp, i32, fp, fp, fp, fp, fp, fp, fp, fp, i32, i32]
    f.argtypes += [ctypes.c_float, ctypes.c_float, fp]
    lib.dare_kept_l1.restype = ctypes.c_double
    lib.dare_kept_l1.argtypes = [fp, i32, i32, fp, fp, i64, ctypes.c_int32]
    lib.l1_round.restype = ctypes.c_double
    lib.l1_round.argtypes = [fp]
    lib.gta_fused_shared.restype = None
    lib.gta_fused_shared.argtypes = [i64, i64, fp, i32, *f.argtypes[2:]]
    lib.gta_fused_post.restype = i32
    lib.gta_fused_post.argtypes = [i32, i64, i64, *f.argtypes[2:]]
    lib.gta_fused_join.restype = None
    lib.gta_fused_join.argtypes = []
    lib.abs_l1_bins.restype = None
    lib.abs_l1_bins.argtypes = [i64, i64, fp, fp, fp, fp, ctypes.c_int32, fp]
    lib.linear_bf16.restype = i64
    lib.linear_bf16.argtypes = [i64, i64, i32, fp, fp, i32, ctypes.c_float, fp, fp]
    lib.abs_delta_hist.restype = None
    lib.abs_delta_hist.argtypes = [i64, i64, fp, fp, fp]
    lib.abs_delta_gather.restype = i64
    lib.abs_delta_gather.argtypes = [i64, i64, fp, fp, ctypes.c_uint32, fp, fp]
    u32 = ctypes.c_uint32
    lib.mt_uniform24.restype = None
    mt = [ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(u32), fp, i64, fp, fp, fp]
    lib.mt_uniform24.argtypes = mt
    lib.abs_l1_bins2.restype = None
    lib.abs_l1_bins2.argtypes = [i64, i64, fp, fp, fp, fp, ctypes.c_int32, fp, fp]
    lib.u_bucket_members.restype = i64
    lib.u_bucket_members.argtypes = [i64, i64, fp, fp, fp, fp, ctypes.c_int32, fp, fp]
    lib.dare_bucket_sums.restype = None
    lib.dare_bucket_sums.argtypes = [i64, i64, fp, fp, fp, fp]
    lib.abs_l1_bins_listed.restype = None
    lib.abs_l1_bins_listed.argtypes = [fp, fp, i64, ctypes.c_int32, fp]
    lib.abs_delta_bracket.restype = i64
    lib.abs_delta_bracket.argtypes = [i64, i64, fp, fp, u32, u32, fp, fp, i64, fp]
    lib.tie_pairs.restype = None
    lib.tie_pairs.argtypes = [i64, i64, fp, fp, fp]
    lib.tie_select.restype = i64
    lib.tie_select.argtypes = [i64, fp, i64, u32, fp, i64]
    _lib = lib
    return _lib


def usable(
    base: torch.Tensor,
    sources: list[torch.Tensor],
    out: torch.Tensor | None,
    *,
    dtype: torch.dtype = torch.float32,
    most: int | None = MAX_MODELS,
) -> bool:
    """The kernel serves these tensors: ``dtype`` (``out`` float32), contiguous, on the CPU, one
    size, at most ``most`` models (None: any number)."""
    if not sources or (most is not None and len(sources) > most) or library() is None:
        return False
    n = base.numel()
    for t in (base, *sources, base if out is None else out):
        want = torch.float32 if t is out else dtype
        # (is_cpu, not device.type: this runs for every tensor of every candidate)
        if t.dtype != want or not t.is_cpu or not t.is_contiguous() or t.numel() != n:
            return False
    return True


def run(
    base: torch.Tensor,
    sources: list[torch.Tensor],
    *,
    is_tau: bool,
    thresholds: list[tuple[float, int] | None],
    weights: list[float],
    consensus: str | None,
    normalize: bool,
    scalar_divisor: float,
    lam: float,
    out: torch.Tensor,
    uniforms: list[Packed] | None = None,
    keep_rates: list[float] | None = None,
    scales: list[float] | None = None,
) -> torch.Tensor:
    """``out`` = the generalized task arithmetic of ``sources`` over ``base`` (see the C file).
    ``thresholds[j]``: model j's top-k rule (value, split index) or None (keep all);
    ``uniforms``/``keep_rates``: DARE's keep rule u < p per model (instead of thresholds),
    the uniforms packed (``packed_uniform``); ``scales``: the per-model L1 rescale factors
    (default 1)."""
    lib = library()
    assert lib is not None  # (and usable(base, sources, out): the callers check it)
    m = len(sources)
    ptrs = (ctypes.c_void_p * m)(*[t.data_ptr() for t in sources])
    has_thr = (ctypes.c_int * m)(*[int(t is not None) for t in thresholds])
    thr = (ctypes.c_float * m)(*[t[0] if t else 0.0 for t in thresholds])
    split = (ctypes.c_int64 * m)(*[t[1] if t else 0 for t in thresholds])
    hi = lo = k = None
    if uniforms is not None:
        hi = (ctypes.c_void_p * m)(*[x.high.data_ptr() for x in uniforms])
        lo = (ctypes.c_void_p * m)(*[x.low.data_ptr() for x in uniforms])
        k = (ctypes.c_int32 * m)(*[below(p) for p in keep_rates or [1.0] * m])
    sc = (ctypes.c_float * m)(*(scales or [1.0] * m))
    w = (ctypes.c_float * m)(*weights)
    args = (m, base.data_ptr(), ctypes.addressof(ptrs), int(is_tau), ctypes.addressof(has_thr))
    args += (ctypes.addressof(thr), ctypes.addressof(split))
    args += tuple(None if x is None else ctypes.addressof(x) for x in (hi, lo, k))
    args += (ctypes.addressof(sc), ctypes.addressof(w), _CONSENSUS[consensus], int(normalize))
    args += (scalar_divisor, lam, out.data_ptr())
    keep = (ptrs, has_thr, thr, split, hi, lo, k, sc, w, base, sources, uniforms, out)
    _shared(lib, base.numel(), args, keep)
    return out


_BLOCK = 1 << 16  # elements a thread claims at a time: 8 streams of it stay in L2
_local = threading.local()  # .overlap: inside deferred(); .pending: the call not finished


def _shared(lib, n: int, args: tuple, keep: tuple) -> None:
    """Run gta_fused over n elements, this thread and helper threads claiming blocks (see
    gta_fused_shared). Returns when all are done — or, inside ``deferred()``, as soon as the
    helpers have a large call (``keep``: what its arguments point to, kept alive until then).
    The helpers are the C library's own threads (gta_fused_post: no GIL to wait for), or,
    when those are taken by another Python thread's call, Python's pool."""
    threads = torch.get_num_threads()
    defer = getattr(_local, "overlap", False) and threads > 1 and n >= _BLOCK
    if defer:
        finish()  # one call in flight at a time
    blocks = -(-n // _BLOCK)  # (more helpers than blocks would find nothing to claim)
    helpers = min(threads - 1, blocks) if defer else min(threads, blocks) - 1
    if helpers > 0 and lib.gta_fused_post(helpers, n, _BLOCK, *args):
        if defer:
            _local.pending = (None, n, None, args, keep)
        else:
            lib.gta_fused_join()
        return
    kernel = lib.gta_fused_shared
    share = np.zeros(2, dtype=np.int64)
    for _ in range(helpers):
        _threads().submit(lambda s=share: kernel(n, _BLOCK, s.ctypes.data, 0, *args))
    if defer:
        _local.pending = (kernel, n, share, args, keep)
    else:
        kernel(n, _BLOCK, share.ctypes.data, 1, *args)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside, a large ``run`` returns once the helper threads have it (``_shared``), and the
    caller's Python for the next tensor (its rules, lookups, dispatch) runs while they work;
    the next large call or ``finish()`` completes it, this thread claiming the blocks left.
    For a caller that reads no output before calling ``finish()``: a worker writing a
    candidate into its resident model. (Before, the second core idled during that Python:
    ~1/3 of a candidate.)"""
    _local.overlap = True
    try:
        yield
    finally:
        _local.overlap = False


def in_flight() -> bool:
    """Whether this thread's deferred ``run`` is still in flight (the helpers busy with it)."""
    return getattr(_local, "pending", None) is not None


def finish() -> None:
    """Complete this thread's deferred ``run`` (``deferred``), if any: its output is then
    written."""
    pending = getattr(_local, "pending", None)
    if pending is not None:
        _local.pending = None
        kernel, n, share, args, _keep = pending
        if kernel is None:  # posted to the C helpers
            library().gta_fused_join()
        else:
            kernel(n, _BLOCK, share.ctypes.data, 1, *args)


def l1_bins(
    src: torch.Tensor,
    base: torch.Tensor | None,
    u: Packed | None = None,
    p: float = 1.0,
) -> np.ndarray:
    """The 256 per-exponent mantissa sums (int64) of |src − base| (kept where u < p, ``u``
    packed): the exact L1 norm's parts (``exact_l1.l1_from_bins`` rounds them)."""
    lib = library()
    assert lib is not None
    bptr = None if base is None else base.data_ptr()
    rule = (None, None, 0) if u is None else (u.high.data_ptr(), u.low.data_ptr(), below(p))
    chunks = _chunks(src.numel())
    bins = [np.zeros(256, dtype=np.int64) for _ in chunks]

    def fill(c: tuple[int, int], b: np.ndarray) -> None:
        lib.abs_l1_bins(c[0], c[1], bptr, src.data_ptr(), *rule, b.ctypes.data)

    _parallel(fill, chunks, bins)
    # a chunk's bin is < 2^55 (2^31 mantissas < 2^24): the chunks' int64 sum cannot overflow
    return bins[0] if len(bins) == 1 else np.sum(bins, axis=0)


class Listed:
    """Entries listed with their uniform and |src − base| (``bucket_members``): a (2, count)
    uint32 array, row 0 the uniforms' k (u = k · 2^-24), row 1 the |src − base|'s bits, in
    index order. Their addresses are resolved once: a search worker sums them for many
    candidates (``l1_bins_listed``)."""

    __slots__ = ("pairs", "_ub", "_ab")

    def __init__(self, pairs: np.ndarray) -> None:
        self.pairs = np.ascontiguousarray(pairs, dtype=np.uint32)
        self._ub, self._ab = self.pairs[0].ctypes.data, self.pairs[1].ctypes.data

    @property
    def nbytes(self) -> int:
        return self.pairs.nbytes

    def __len__(self) -> int:
        return self.pairs.shape[1]


def bucket_members(src: torch.Tensor, base: torch.Tensor, u: Packed, q: int) -> Listed:
    """The entries of bucket q (q/256 ≤ u < (q+1)/256, i.e. k >> 16 == q), with their k and
    |src − base|."""
    lib = library()
    assert lib is not None
    chunks = _chunks(u.numel())
    # room for every entry: pages that are never written are never touched, so cost nothing
    parts = [np.empty((2, b - a), dtype=np.uint32) for a, b in chunks]
    got = [0] * len(chunks)
    ptrs = (base.data_ptr(), src.data_ptr(), u.high.data_ptr(), u.low.data_ptr(), q)

    def scan(c: tuple[int, int], k: int) -> None:
        x = parts[k]
        got[k] = lib.u_bucket_members(c[0], c[1], *ptrs, x[0].ctypes.data, x[1].ctypes.data)

    _parallel(scan, chunks, list(range(len(chunks))))
    return Listed(np.concatenate([x[:, :g] for x, g in zip(parts, got)], axis=1))


def bucket_sums(src: torch.Tensor, base: torch.Tensor, u: Packed) -> np.ndarray:
    """(256, 256) int64: [q, e] the mantissa sums of |src − base| over the entries in DARE
    bucket q (``dare_l1``) whose |src − base| has biased exponent e (exact integers)."""
    lib = library()
    assert lib is not None
    chunks = _chunks(src.numel())
    sums = [np.zeros((256, 256), dtype=np.int64) for _ in chunks]
    ptrs = (base.data_ptr(), src.data_ptr(), u.high.data_ptr())

    def fill(c: tuple[int, int], x: np.ndarray) -> None:
        lib.dare_bucket_sums(c[0], c[1], *ptrs, x.ctypes.data)

    _parallel(fill, chunks, sums)
    # (a sum of < 2^31 mantissas below 2^24 per chunk: the int64 total cannot overflow)
    return sums[0] if len(sums) == 1 else np.sum(sums, axis=0)


def l1_bins_listed(listed: Listed, p: float) -> np.ndarray:
    """``l1_bins(src, base, u, p)`` restricted to ``bucket_members``' entries."""
    lib = library()
    assert lib is not None
    bins = np.zeros(256, dtype=np.int64)
    lib.abs_l1_bins_listed(listed._ub, listed._ab, len(listed), below(p), bins.ctypes.data)
    return bins


def kept_l1_listed(row: np.ndarray, e_lo: int, listed: Listed | None, p: float) -> float:
    """``exact_l1.l1_from_bins`` of ``row`` (int64 sums from exponent ``e_lo``) plus
    ``l1_bins_listed(listed, p)``, in one call; NaN when the C rounding declines."""
    lib = library()
    assert lib is not None and row.dtype == np.int64 and row.flags.c_contiguous
    ub, ab, c = (None, None, 0) if listed is None else (listed._ub, listed._ab, len(listed))
    return lib.dare_kept_l1(row.ctypes.data, e_lo, row.size, ub, ab, c, below(p))


def l1_bins_both(
    src: torch.Tensor, base: torch.Tensor, u: Packed, p: float
) -> tuple[np.ndarray, np.ndarray]:
    """``l1_bins(src, base)`` and ``l1_bins(src, base, u, p)`` in one read (DARE's rescale)."""
    lib = library()
    assert lib is not None
    chunks = _chunks(src.numel())
    bins = [np.zeros((2, 256), dtype=np.int64) for _ in chunks]
    ptrs = (base.data_ptr(), src.data_ptr(), u.high.data_ptr(), u.low.data_ptr(), below(p))

    def fill(c: tuple[int, int], b: np.ndarray) -> None:
        lib.abs_l1_bins2(c[0], c[1], *ptrs, b[0].ctypes.data, b[1].ctypes.data)

    _parallel(fill, chunks, bins)
    total = bins[0] if len(bins) == 1 else np.sum(bins, axis=0)  # (< 2^63: see l1_bins)
    return total[0], total[1]


def linear_bf16(
    sources: list[torch.Tensor], weights: list[float], normalize: bool, bf16: bool = False
) -> torch.Tensor:
    """Σ w_i s_i [/ Σ w_i] from bfloat16 CPU tensors (same shape, contiguous) in one pass: the
    bits of evomerge.merge.ops.linear on the float32 copies, without making them; as bfloat16 when
    ``bf16`` (the float32 result narrowed as torch narrows). NonFiniteInput when an input holds
    NaN/Inf (checked in the same read)."""
    lib = library()
    assert lib is not None
    m = len(sources)
    out = torch.empty(sources[0].shape, dtype=torch.bfloat16 if bf16 else torch.float32)
    ptrs = (ctypes.c_void_p * m)(*[t.data_ptr() for t in sources])
    w = (ctypes.c_float * m)(*weights)
    args = (m, ctypes.addressof(ptrs), ctypes.addressof(w), int(normalize), sum(weights))
    args += (None, out.data_ptr()) if bf16 else (out.data_ptr(), None)
    chunks = _chunks(out.numel())
    bad = [0] * len(chunks)

    def part(c: tuple[int, int], k: int) -> None:
        bad[k] = lib.linear_bf16(c[0], c[1], *args)

    _parallel(part, chunks, list(range(len(chunks))))
    if any(bad):
        raise NonFiniteInput("linear")
    return out


def top_k_rule(src: torch.Tensor, base: torch.Tensor | None, k: int) -> tuple[float, int]:
    """The top-k rule for |src − base| (|src| without a base), 1 ≤ k < n, by radix selection
    in C: (the k-th largest magnitude v, the split index: |d| ≥ v is kept below it, |d| > v
    from it on; ties at v kept lowest index first). A split inside the tensor says that ties
    straddle v: where v > 0 the engine then keeps mergekit's argsort order instead
    (``sparsify.argsort_ties``)."""
    lib = library()
    assert lib is not None and usable(src, [src] if base is None else [base], None)
    found = _bracketed(lib, src, base, k)
    if found is None:  # the sample misled (adversarial layouts): the two-read histogram path
        found = _binned(lib, src, base, k)
    bits, index, r = found  # the k-th largest is the r-th largest of the gathered entries
    vbits = np.partition(bits, bits.size - r)[bits.size - r]
    v = float(np.array(vbits, dtype=np.uint32).view(np.float32))
    equal = np.flatnonzero(bits == vbits)
    need = r - int(np.count_nonzero(bits > vbits))  # entries equal to v that are kept
    if need >= equal.size:
        return v, src.numel()
    return v, int(index[equal[need - 1]]) + 1


def nth_equal(src: torch.Tensor, base: torch.Tensor | None, v: float, count: int, nth: int) -> int:
    """Flat index of the ``nth`` (1-based) entry with |src − base| == v, of the ``count`` such
    entries (the caller knows it: a search worker's sorted |τ|): one read, no temporaries."""
    lib = library()
    assert lib is not None and 1 <= nth <= count
    vbits = int(np.array(v, dtype=np.float32).view(np.uint32))
    found = _bracket(lib, src, base, vbits, vbits, lambda a, b: count)
    if found is None or found[1].size < nth:
        raise ValueError(f"fewer than the stated {count} entries equal {v}")
    return int(found[1][nth - 1])


def _bracket(
    lib, src: torch.Tensor, base: torch.Tensor | None, lo: int, hi: int, room
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """abs_delta_bracket over the chunks (threads) of src: the entries whose |src − base| bits
    lie in [lo, hi] (their bits and flat indices, index order) and the count above hi. None
    when a chunk holds more than ``room(start, stop)`` of them."""
    chunks = _chunks(src.numel())
    cap = [room(a, b) + 4097 for a, b in chunks]  # (the C loop wants a 4,096-entry block spare)
    bits = [np.empty(c, dtype=np.uint32) for c in cap]
    index = [np.empty(c, dtype=np.int64) for c in cap]
    above = np.zeros(len(chunks), dtype=np.int64)
    got = [0] * len(chunks)
    bptr, sptr = (None if base is None else base.data_ptr()), src.data_ptr()

    def scan(c: tuple[int, int], i: int) -> None:
        b, x, a = bits[i].ctypes.data, index[i].ctypes.data, above[i:].ctypes.data
        got[i] = lib.abs_delta_bracket(c[0], c[1], bptr, sptr, lo, hi, b, x, cap[i], a)

    _parallel(scan, chunks, list(range(len(chunks))))
    if min(got) < 0:
        return None
    return (
        np.concatenate([b[:g] for b, g in zip(bits, got)]),
        np.concatenate([x[:g] for x, g in zip(index, got)]),
        int(above.sum()),
    )


Gathered = tuple[np.ndarray, np.ndarray, int]  # bits, flat indices (index order), rank inside
_SAMPLE = 1 << 16


def _bracketed(lib, src: torch.Tensor, base: torch.Tensor | None, k: int) -> Gathered | None:
    """One read: a strided sample brackets the k-th largest's bits, the entries inside the
    bracket are gathered and those above it counted. None when the bracket missed."""
    n = src.numel()
    if n < 4 * _SAMPLE:
        return None  # small tensors: the histogram's two reads are cheap
    step = n // _SAMPLE
    sample = src[::step] if base is None else src[::step] - base[::step]
    sb = np.sort(sample.abs().contiguous().view(torch.int32).numpy())
    m = sb.size
    j = m - 1 - (k - 1) * m // n  # the k-th largest's ascending position in the sample
    d = 4 * int((m * (k / n) * (1 - k / n)) ** 0.5) + 64
    lo = int(sb[j - d]) if j - d >= 0 else 0
    hi = int(sb[j + d]) if j + d < m else 0xFFFFFFFF
    share = min(1.0, 4 * (2 * d + 1) / m)  # 4× the sample's share of the bracket
    found = _bracket(lib, src, base, lo, hi, lambda a, b: int((b - a) * share) + 4095)
    if found is None:
        return None
    bits, index, above = found
    r = k - above
    return (bits, index, r) if 0 < r <= bits.size else None


def _binned(lib, src: torch.Tensor, base: torch.Tensor | None, k: int) -> Gathered:
    """Two reads: a 4,096-bin histogram of the top 12 bits, then the k-th largest's bin."""
    bptr, sptr = (None if base is None else base.data_ptr()), src.data_ptr()
    chunks = _chunks(src.numel())
    hists = [np.zeros(_BINS, dtype=np.uint32) for _ in chunks]
    _parallel(lambda c, h: lib.abs_delta_hist(c[0], c[1], bptr, sptr, h.ctypes.data), chunks, hists)
    hist = np.sum(hists, axis=0, dtype=np.int64)
    from_top = np.cumsum(hist[::-1])
    i = int(np.searchsorted(from_top, k))  # the top i+1 bins hold the k largest
    high = _BINS - 1 - i
    above = int(from_top[i] - hist[high])  # entries in higher bins: all kept
    # the bin's entries, each chunk into its own slice (sized by its histogram), index order
    # (one slot of slack after each slice: the C loop writes every entry at the next free slot)
    ends = np.cumsum([int(h[high]) + 1 for h in hists])
    bits = np.empty(int(ends[-1]), dtype=np.uint32)
    index = np.empty(int(ends[-1]), dtype=np.int64)
    slots = [(int(e) - int(h[high]) - 1) for e, h in zip(ends, hists)]
    _parallel(
        lambda c, s: lib.abs_delta_gather(
            c[0], c[1], bptr, sptr, high, bits[s:].ctypes.data, index[s:].ctypes.data
        ),
        chunks,
        slots,
    )
    keep = np.concatenate([np.arange(s, e - 1) for s, e in zip(slots, ends)])
    return bits[keep], index[keep], k - above


_BINS = 1 << 12


def _parallel(fn, chunks: list[tuple[int, int]], per_chunk: list) -> None:
    """``fn(chunk, x)`` for every chunk: on the pool's threads and this one — or all on this
    one while a deferred kernel call is in flight (``deferred``): the helpers are busy with
    it, so this thread's scan fills the other core, where finishing the call first would leave
    the scan waiting on it (a DARE candidate's new buckets: ~1/3 of its time)."""
    if len(chunks) == 1 or getattr(_local, "pending", None) is not None:
        for c, x in zip(chunks, per_chunk):
            fn(c, x)
    else:  # ctypes releases the GIL during the call: the chunks run in parallel
        # the calling thread runs the first chunk itself: one hand-off fewer per call
        rest = [_threads().submit(fn, c, x) for c, x in zip(chunks[1:], per_chunk[1:])]
        fn(chunks[0], per_chunk[0])
        for f in rest:
            f.result()


def _chunks(n: int) -> list[tuple[int, int]]:
    # (at least one part per 2^31 elements: the histograms count in uint32)
    parts = max(1, min(torch.get_num_threads(), n // _MIN_CHUNK), -(-n // (1 << 31)))
    step = -(-n // parts)
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()))
    return _pool
