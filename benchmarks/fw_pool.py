"""Frank-Wolfe merging vs uniform task arithmetic as irrelevant models join the pool.

    python benchmarks/fw_pool.py [--zoo digits lm] [--sizes 0 4 8 12] [--workdir DIR]

For each zoo, a pool of 4 relevant experts plus 0/4/8/12 irrelevant models (label- or
value-permuted fine-tunes of the same base; ``evomerge.zoo.digits_pool`` / ``lm_pool``), shuffled
with a fixed seed so the experts are not simply first. Each pool size runs in its own child
process (so its peak RSS is its own) and reports:

* FW hard task arithmetic, layer-wise (lam 1) and FW hard TIES (density 0.3, lam 0.9), 10
  iterations, proxy = a small labelled training subset: the score of the final iterate theta_T
  (what FW returns) and the best iterate (what the search archive keeps);
* uniform task arithmetic over the whole pool, lam 0.3 and the plain mean (lam 1/K);
* memory: bytes of pool tensors held at once while streaming (peak), theta + gradient bytes,
  the child's peak RSS, and what holding the whole pool would take.

digits score: mean test accuracy over the 4 input transforms (360 test images each);
lm score: teacher-forced exact match on the whole 100-word target dictionary (the proxy holds
half of it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES = (0, 4, 8, 12)


def _pool(zoo: str, workdir: Path, n_irr: int):
    if zoo == "digits":
        from evomerge.zoo.digits_pool import TARGETS, build_digits_pool, digits_accuracy

        pool = build_digits_pool(workdir / "digits", n_irrelevant=n_irr)
        proxy = {"kind": "digits", "transform": list(TARGETS), "n": 64}
        return pool, proxy, lambda theta: digits_accuracy(pool.base, theta)
    from evomerge.zoo.lm_pool import build_lm_pool, lm_exact_match

    pool = build_lm_pool(
        workdir / "lm",
        n_irrelevant=n_irr,
        per_expert=25,
        base_steps=55,
        expert_steps=150,
        expert_lr=3e-4,
    )
    proxy = {"kind": "lm", "data": pool.proxy, "n": 50}
    return pool, proxy, lambda theta: lm_exact_match(pool.base, theta, pool.items)


def child(zoo: str, workdir: Path, n_irr: int, iterations: int) -> dict:
    from evomerge.drivers.frank_wolfe import FrankWolfe
    from evomerge.io.lazy_checkpoint import Meter
    from evomerge.spaces.fw_pool import FWPoolSpace
    from evomerge.workers.gradient_runner import run_frank_wolfe
    from evomerge.workers.pool_weights import build_theta

    pool, proxy, score = _pool(zoo, workdir, max(SIZES))
    members = [*pool.relevant, *pool.irrelevant[:n_irr]]
    random.Random(0).shuffle(members)
    row: dict = {"irrelevant": n_irr, "pool": len(members)}
    peaks, resident = [], []
    for tag, variant, opts in (("fw_ta", "task_arithmetic", {}), ("fw_ties", "ties", {"lam": 0.9})):
        space = FWPoolSpace(pool.base, members, variant=variant, iterations=iterations)
        drv = FrankWolfe.for_space(space, seed=0, proxy=proxy, iterations=iterations, **opts)
        t0 = time.perf_counter()
        steps = run_frank_wolfe(space, drv, score)
        row[f"{tag}_final"] = steps[-1].fitness
        row[f"{tag}_best"] = drv.best[1]
        row[f"{tag}_s"] = time.perf_counter() - t0
        w = drv.state.mask
        row[f"{tag}_irrelevant_picks"] = int(
            sum(w[:, members.index(m)].sum() for m in pool.irrelevant[:n_irr])
        )
        peaks += [s.peak_bytes for s in steps if s.peak_bytes]
    space = FWPoolSpace(pool.base, members)
    for tag, lam in (("ta_0.3", 0.3), ("ta_mean", 1.0 / len(members))):
        row[tag] = score(build_theta(space, np.full(space.dim, lam), space.resolve, Meter()))
    from evomerge.fitness.proxy_loss import ProxySpec
    from evomerge.workers.gradient import GradientRequest
    from evomerge.workers.gradient_job import run_gradient_job

    x = np.full(space.dim, 1.0 / len(members))
    al = run_gradient_job(space, GradientRequest(0, x, ProxySpec.parse(proxy)))
    resident.append(al.resident_bytes)
    row["stream_peak_kib"] = max(peaks) / 1024
    row["theta_grad_kib"] = max(resident) / 1024
    row["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["pool_held_kib"] = sum(_bytes(m) for m in members) / 1024
    return row


def _bytes(folder: str) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


COLS = [
    ("irrelevant", "irr", "{}"),
    ("pool", "K", "{}"),
    ("fw_ta_final", "FW-TA θ_T", "{:.1f}"),
    ("fw_ta_best", "FW-TA best", "{:.1f}"),
    ("fw_ties_final", "FW-TIES θ_T", "{:.1f}"),
    ("fw_ties_best", "FW-TIES best", "{:.1f}"),
    ("ta_0.3", "TA λ0.3", "{:.1f}"),
    ("ta_mean", "TA mean", "{:.1f}"),
    ("fw_ta_irrelevant_picks", "irr picks", "{}"),
    ("stream_peak_kib", "stream peak KiB", "{:.0f}"),
    ("theta_grad_kib", "θ+g KiB", "{:.0f}"),
    ("rss_mib", "RSS MiB", "{:.0f}"),
    ("pool_held_kib", "pool KiB", "{:.0f}"),
    ("fw_ta_s", "FW-TA s", "{:.1f}"),
]


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(c[1] for c in COLS) + " |"
    sep = "|" + "|".join("---" for _ in COLS) + "|"
    body = ["| " + " | ".join(f.format(r[k]) for k, _, f in COLS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--zoo", nargs="+", default=["digits", "lm"], choices=["digits", "lm"])
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/evomerge-fw-bench"))
    ap.add_argument("--child", nargs=2, metavar=("ZOO", "N_IRRELEVANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.workdir, int(args.child[1]), args.iterations)))
        return
    for zoo in args.zoo:
        _pool(zoo, args.workdir, max(SIZES))  # build once, before the timed children
        rows = []
        for n in args.sizes:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                zoo,
                str(n),
                "--workdir",
                str(args.workdir),
                "--iterations",
                str(args.iterations),
            ]
            out = subprocess.run(
                cmd,
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"\n## {zoo}\n\n{table(rows)}")
        ref = {r["irrelevant"]: r for r in rows}
        if 0 in ref and max(ref) > 0:
            lo, hi = ref[0], ref[max(ref)]
            for key in ("fw_ta_final", "fw_ta_best", "fw_ties_final", "fw_ties_best", "ta_0.3"):
                print(
                    f"- {key}: {lo[key]:.1f} with 0 irrelevant -> {hi[key]:.1f} with {max(ref)} "
                    f"({hi[key] - lo[key]:+.1f})"
                )


if __name__ == "__main__":
    main()
