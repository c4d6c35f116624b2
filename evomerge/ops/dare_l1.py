"""DARE's L1 rescale on a search worker without a pass over the tensor per candidate.

mergekit's DARE (and ours) rescales each model's kept task vector by Σ|τ| / Σ_{u < p} |τ|, where
u are the tensor's seeded uniforms and p the keep rate. A search changes p with every candidate,
while τ and u stay fixed (the worker's ResidentCache holds u). So the worker keeps, per expert
tensor, the exact per-exponent mantissa sums (``exact_l1.l1_from_bins``' parts) of the entries
whose u falls below q/Q, for every q of Q = 256 buckets. For a keep rate p, the buckets below
⌊pQ⌋ are all kept (their sums are one lookup), those above all dropped, and only the ~n/Q
entries of bucket ⌊pQ⌋ add their |τ| when u < p. The first candidate whose rate falls in a
bucket finds that bucket's members with one read of u (``members``: each member's u and |τ|,
in index order); the worker keeps them, so a later rate in the same bucket reads only those
~n/Q pairs, in order. A rate on a bucket edge (pQ an integer) needs no bucket. Sums are exact
integers, so the result is, bit for bit, the direct ``fused_gta.l1_bins`` over the whole tensor.

Q is a power of two, so q/Q and p·Q are exact in float32 and bucket edges agree with u < p.
Memory per expert tensor: (Q + 1) × (exponents in use) int64 sums (~60 KiB for a typical τ),
and 8 bytes per member of each bucket kept (n/Q members: 1/128 of u's bytes per bucket).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from evomerge.ops import exact_l1, fused_gta

Q = 256


@dataclass(frozen=True)
class KeptL1Table:
    prefix: np.ndarray  # (Q + 1, e_hi − e_lo + 1) int64: sums of the entries with u < q/Q
    e_lo: int

    @property
    def nbytes(self) -> int:
        return self.prefix.nbytes


def build(tau_abs_bits: torch.Tensor, u: torch.Tensor) -> KeptL1Table:
    """The table of one expert tensor: ``tau_abs_bits`` = |τ| viewed as int32 (flat), ``u`` its
    uniforms (flat float32)."""
    e, mant = exact_l1.exponent_mantissa(tau_abs_bits)
    q = (u * Q).to(torch.int64).clamp_(max=Q - 1)  # u < 1, so q ≤ Q − 1 already
    used = torch.nonzero(torch.bincount(e, minlength=256)).reshape(-1)
    e_lo, e_hi = (int(used[0]), int(used[-1])) if used.numel() else (0, 0)
    width = e_hi - e_lo + 1
    # per (bucket, exponent) sums in float64: exact integers while below 2^53 (≤ 2^29 entries)
    assert tau_abs_bits.numel() < 1 << 29, "tensor too large for the bucketed DARE table"
    key = q * width + (e - e_lo)
    sums = torch.bincount(key, mant.double(), Q * width).reshape(Q, width).to(torch.int64)
    prefix = np.zeros((Q + 1, width), dtype=np.int64)
    np.cumsum(sums.numpy(), axis=0, out=prefix[1:])
    return KeptL1Table(prefix, e_lo)


Members = Callable[[int, Callable[[], fused_gta.Listed]], fused_gta.Listed]


def _found_now(q: int, make: Callable[[], fused_gta.Listed]) -> fused_gta.Listed:
    return make()  # no cache: the members serve this call only


def members(t: torch.Tensor, b: torch.Tensor, u: torch.Tensor, q: int) -> fused_gta.Listed:
    """Bucket q's entries (q/Q ≤ u < (q+1)/Q): their u and |t − b| (``fused_gta``)."""
    return fused_gta.bucket_members(t, b, u, q / Q, (q + 1) / Q)


def kept_l1(
    table: KeptL1Table,
    t: torch.Tensor,
    b: torch.Tensor,
    u: torch.Tensor,
    p: float,
    cached_members: Members = _found_now,
) -> float:
    """Σ_{u < p} |t − b|, exact, rounded once to float32 (as ``exact_l1.l1_from_bins``).
    ``cached_members(q, make)``: bucket q's members (``members``) from the worker's cache
    (``make`` finds them), so that a later candidate reads only them, not every u."""
    qp = min(int(np.float32(p) * Q), Q) if p > 0 else 0
    row = table.prefix[qp]
    listed = None
    if qp < Q and np.float32(p) > np.float32(qp / Q):  # p inside bucket qp (not on its edge)
        listed = cached_members(qp, lambda: members(t, b, u, qp))
    value = fused_gta.kept_l1_listed(row, table.e_lo, listed, p)
    if value == value:
        return value
    bins = np.zeros(256, dtype=np.int64)  # exponents too far apart for the C rounding
    bins[table.e_lo : table.e_lo + row.size] = row
    if listed is not None:
        bins += fused_gta.l1_bins_listed(listed, p)
    return exact_l1.l1_from_bins_py(bins)
