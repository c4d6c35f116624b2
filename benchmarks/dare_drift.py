"""DARE candidates as a search drifts: the ResidentCache's bucket members kept least recently
used first out (the default) against first come, first kept, side by side.

    python benchmarks/dare_drift.py [--wide 200 --converged 12 --hidden 512]

A search first proposes keep rates all over [0.1, 0.9] (``--wide`` candidates: their buckets'
members fill the cache's budget, 1× the loaded models' bytes), then converges near one rate
(``--converged`` candidates within ±0.0015 of 0.62). First come, first kept holds the early
buckets forever, so a converged candidate finds its bucket's members again each time; LRU
gives the early ones' room to the buckets in use. Both caches see the same candidates, one
after the other; the converged candidates' medians are printed beside one pass over the
experts' bytes (benchmarks/candidate_cost.py's floor).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from candidate_cost import _load, build_family, one_pass

from evomerge.recipe import ModelRef, Recipe
from evomerge.workers.materialize import ExpertCache, Materializer


def candidate(base: str, experts: list[str], densities) -> Recipe:
    models = [
        ModelRef(model=e, parameters={"weight": 0.5, "density": float(d)})
        for e, d in zip(experts, densities, strict=True)
    ]
    return Recipe(merge_method="dare_ties", models=models, base_model=base, seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--wide", type=int, default=200)
    ap.add_argument("--converged", type=int, default=12)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "evomerge_cost"))
    args = ap.parse_args()
    base, experts = build_family(
        Path(args.workdir) / f"l{args.layers}h{args.hidden}", args.layers, args.hidden
    )
    arms = {}
    for policy in ("lru", "first come"):
        cache = ExpertCache()
        for ref in [base, *experts]:
            cache.tensors(ref)
        if policy == "first come":  # the policy before LRU: no candidate marks, no eviction
            cache.stats.begin_candidate = lambda: None
        arms[policy] = (cache, Materializer(cache))
    print(f"{args.layers} layers, hidden {args.hidden}; load average before: {_load()}")
    rng = np.random.default_rng(0)
    for _ in range(args.wide):
        r = candidate(base, experts, rng.uniform(0.1, 0.9, len(experts)).round(4))
        for _, mat in arms.values():
            mat.materialize(r)
    times: dict[str, list[float]] = {p: [] for p in arms}
    cache0 = arms["lru"][0]
    out = {n: torch.empty_like(t) for n, t in cache0.tensors(experts[0]).items()}
    passes = []
    for _ in range(args.converged):
        r = candidate(base, experts, (0.62 + rng.uniform(-0.0015, 0.0015, len(experts))).round(5))
        for policy, (_, mat) in arms.items():
            t0 = time.perf_counter()
            mat.materialize(r)
            times[policy].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        one_pass(cache0, experts, out)
        passes.append(time.perf_counter() - t0)
    t_pass = statistics.median(passes)
    for policy, (cache, _) in arms.items():
        t = statistics.median(times[policy])
        used = cache.stats.nbytes / 2**20
        print(
            f"{policy:<11} converged candidate {1000 * t:6.1f} ms = {t / t_pass:.2f}x one pass"
            f" ({1000 * t_pass:.1f} ms); cache {used:.0f} MiB"
        )
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
