"""Per-candidate cost: in-place materialization vs one pass over the experts' bytes vs
merge-to-disk-then-reload (the mergekit-evolve way), side by side, medians of several runs.

    python benchmarks/candidate_cost.py [--layers 8 --hidden 256 --runs 5]

Builds (once, under --workdir) a random Llama-shaped base and 3 experts (float32), then for each
operator times:

* ``in-place``   Materializer.materialize(recipe): experts resident in an ExpertCache, merged
                 tensors written into the resident model's parameters (what a worker does),
                 with the cache's ResidentCache warm (sorted |τ|, seeded uniforms: filled by the
                 first candidate, whose time is printed as ``first s``);
* ``no cache``   the same with the ResidentCache off (``ExpertCache(stats=False)``);
* ``one pass``   the floor: for every tensor, copy expert 1 into the output buffer and add the
                 other experts (reads every expert byte once, writes the model once);
* ``disk``       evomerge's run_merge to a fresh folder + AutoModelForCausalLM.from_pretrained;
* ``varied``     in place, each candidate with new per-model weights and densities (seeded
                 draws in [0.3, 0.7]), as a search proposes them: what the ResidentCache holds
                 for one density does not all carry over (DARE's L1 buckets are found per
                 keep rate's bucket, on first use).

Targets (issue 4): in-place <= 2x one pass, and >= 3x faster than disk. The load average is
printed before and after: on a shared box the ratios move with it (run several times, compare
medians).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evomerge.recipe import ModelRef, Recipe
from evomerge.workers.materialize import ExpertCache, Materializer, write_model

OPS = {
    "linear": ({"weight": 0.4}, {}),
    "task_arithmetic": ({"weight": 0.5}, {}),
    "ties": ({"weight": 0.5, "density": 0.5}, {}),
    # (not 0.5: a keep rate on one of DARE's 256 L1 buckets' edges needs no bucket at all)
    "dare_ties": ({"weight": 0.5, "density": 0.45}, {}),
}


def build_family(root: Path, layers: int, hidden: int) -> tuple[str, list[str]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    names = ["base", "e1", "e2", "e3"]
    if all((root / n / "config.json").is_file() for n in names):
        return str(root / "base"), [str(root / n) for n in names[1:]]
    cfg = LlamaConfig(
        vocab_size=2048,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    base.save_pretrained(str(root / "base"))
    for i, n in enumerate(names[1:]):
        torch.manual_seed(i + 1)
        expert = LlamaForCausalLM(cfg)
        with torch.no_grad():
            for pb, pe in zip(base.parameters(), expert.parameters(), strict=True):
                pe.copy_(pb + 0.02 * torch.randn_like(pb))  # a fine-tune: base + small delta
        expert.save_pretrained(str(root / n))
    return str(root / "base"), [str(root / n) for n in names[1:]]


def recipe_for(op: str, base: str, experts: list[str], rng=None) -> Recipe:
    """The operator's fixed recipe; with ``rng`` (a numpy Generator), a search-like candidate
    with per-model weights and densities drawn in [0.3, 0.7]."""
    per_model, glob = OPS[op]
    draw = (lambda v: v) if rng is None else (lambda v: round(float(rng.uniform(0.3, 0.7)), 4))
    models = [
        ModelRef(model=e, parameters={k: draw(v) for k, v in per_model.items()}) for e in experts
    ]
    needs_base = op != "linear"
    return Recipe(
        merge_method=op,
        models=models,
        base_model=base if needs_base else None,
        parameters=glob,
        seed=0,
    )


def one_pass(cache: ExpertCache, experts: list[str], out: dict[str, torch.Tensor]) -> None:
    for name, dst in out.items():
        dst.copy_(cache.tensor(experts[0], name))
        for e in experts[1:]:
            dst.add_(cache.tensor(e, name))


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "evomerge_cost"))
    ap.add_argument("--ops", default=",".join(OPS))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = Path(args.workdir) / f"l{args.layers}h{args.hidden}"
    base, experts = build_family(root, args.layers, args.hidden)
    cache = ExpertCache()
    for ref in [base, *experts]:
        cache.tensors(ref)  # resident before timing, as on a worker
    mb = cache.nbytes / 2**20
    n_models = len(experts) + 1
    print(
        f"model: {args.layers} layers, hidden {args.hidden}, {mb / n_models:.0f} MiB fp32 each;"
        f" {args.runs} runs, medians; torch threads {torch.get_num_threads()};"
        f" load average before: {_load()}"
    )
    out = {n: torch.empty_like(t) for n, t in cache.tensors(experts[0]).items()}
    floor = lambda: one_pass(cache, experts, out)  # noqa: E731
    print(
        f"{'operator':<16}{'in-place s':>11}{'first s':>9}{'no cache s':>11}{'one pass s':>11}"
        f"{'disk s':>8}{'varied s':>9}{'in-place/pass':>15}{'varied/pass':>12}"
        f"{'disk/in-place':>15}{'cache MiB':>10}"
    )
    for op in args.ops.split(","):
        row = measure(op, cache, base, experts, root, args.runs, floor)
        t_pass = row["pass"]
        print(
            f"{op:<16}{row['inplace']:>11.3f}{row['first']:>9.3f}{row['nocache']:>11.3f}"
            f"{t_pass:>11.3f}{row['disk']:>8.3f}{row['varied']:>9.3f}"
            f"{row['inplace'] / t_pass:>14.2f}x{row['varied'] / t_pass:>11.2f}x"
            f"{row['disk'] / row['inplace']:>14.2f}x{row['cache_mib']:>10.1f}"
        )
    print(f"load average after: {_load()}")


def paired(fa, fb, runs: int) -> tuple[float, float]:
    """Medians of ``fa`` and ``fb`` timed alternately: a burst of load on a shared box hits
    both, so their ratio moves less than two separate series' would."""
    ta, tb = [], []
    for _ in range(runs):
        ta.append(timed(fa, 1))
        tb.append(timed(fb, 1))
    return statistics.median(ta), statistics.median(tb)


def measure(op, cache: ExpertCache, base: str, experts: list, root: Path, runs: int, floor):
    from transformers import AutoModelForCausalLM

    recipe = recipe_for(op, base, experts)
    mat = Materializer(cache)
    stats, cache.stats = cache.stats, None
    mat.materialize(recipe)  # build the resident model once (not a per-candidate cost)
    t_nocache = timed(lambda: mat.materialize(recipe), runs)
    cache.stats = stats
    stats.clear()
    t_first = timed(lambda: mat.materialize(recipe), 1)  # fills the ResidentCache
    t_inplace, t_pass = paired(lambda: mat.materialize(recipe), floor, runs)
    rng = np.random.default_rng(0)
    varied = [recipe_for(op, base, experts, rng) for _ in range(runs)]
    t_varied = statistics.median(timed(lambda r=r: mat.materialize(r), 1) for r in varied)

    def disk() -> None:
        tmp = Path(tempfile.mkdtemp(dir=root))
        try:
            write_model(recipe, tmp / "m")
            AutoModelForCausalLM.from_pretrained(str(tmp / "m"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return {
        "inplace": t_inplace,
        "pass": t_pass,
        "first": t_first,
        "nocache": t_nocache,
        "disk": timed(disk, runs),
        "varied": t_varied,
        "cache_mib": stats.nbytes / 2**20,
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
