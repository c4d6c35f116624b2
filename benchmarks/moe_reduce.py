"""MoE reduction: the score a Mixtral keeps when MC-SMoE, Sub-MoE or the plain group average
merge its 8 experts per layer into 6 (25% fewer) or 4 (50% fewer).

    python benchmarks/moe_reduce.py [--quick] [--limit N] [--keep 6 4] [--seeds 0 1 2]
        [--tables merge compress] [--compress rank=16,sparsity=0.9 ...] [--compress-steps 300]

Builds (or reuses) the lm-moe zoo, reads routing statistics on fitness/calibration/lm-moe.txt
(the zoo's training mixture, never a test prompt), and scores with the zoo's fast evaluator
(exact match, greedy) on the first ``--limit`` test items of each of the four skills. Two forms
of each reduced model are scored: the smaller model that ``evomerge moe-reduce`` writes (one
router row per merged expert: the representative member's), and the paper's form of MC-SMoE's
inference (every router row kept, the members of a group sharing its merged expert). Sub-MoE
and the average cluster with K-means: their rows are the mean over ``--seeds``. No timings:
scores and kept fractions only, which do not depend on the machine's load.

The second table (``--tables compress``) is MC-SMoE's compression step (``--compress`` of
``evomerge moe-reduce``): the M-SMoE merge as the folder form above, then its experts as low
rank plus row-sparse, pruned during ``--compress-steps`` of fine-tuning with distillation from
the original on 4096 lines of the zoo's training mixture (``calibration_lines(seed=1)``: other
draws than the calibration file, never a test prompt). Beside it, the same fine-tuning of the
uncompressed merge, to separate what fine-tuning does from what compression costs. Parameters
are the factored form's (``mc_smoe_factors.safetensors``), MACs a token's multiply-accumulates
through the weight matrices (``compress_store.linear_macs``): counts, not timings.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from evomerge.merge.calibration import read_lines
from evomerge.moe.compress import parse_compress
from evomerge.moe.compress_finetune import compress_and_finetune
from evomerge.moe.compress_store import compress_reduced, linear_macs
from evomerge.moe.experts import layer_experts, moe_blocks, router_weight
from evomerge.moe.mc_smoe import mc_smoe_layer
from evomerge.moe.reduce import load_moe, merge_layers, reduced_model, shared_model
from evomerge.moe.routing_stats import routing_stats
from evomerge.zoo.build import build
from evomerge.zoo.calibration import calibration_lines
from evomerge.zoo.evaluate import evaluate_lm_task, task_dir
from evomerge.zoo.specs import lm_moe

CALIBRATION = Path(__file__).resolve().parents[1] / "fitness" / "calibration" / "lm-moe.txt"
# (label, method, rank fraction); Sub-MoE at half rank shows what its truncation does
VARIANTS = [
    ("MC-SMoE (M-SMoE merge)", "mc-smoe", 1.0),
    ("Sub-MoE, full rank", "sub-moe", 1.0),
    ("Sub-MoE, half rank", "sub-moe", 0.5),
    ("average within groups", "average", 1.0),
    # the authors' Mixtral script: MC-SMoE's groups and weights, no neuron alignment. It is also
    # Sub-MoE's full-rank merge on MC-SMoE's groups (a tested identity), so it separates what
    # Sub-MoE's grouping does from what its merge does
    ("MC-SMoE without alignment", "mc-smoe-unaligned", 1.0),
]


def layers_for(model, stats, method: str, keep: int, seed: int, rank: float):
    if method != "mc-smoe-unaligned":
        return merge_layers(model, stats, method, keep, seed=seed, rank_fraction=rank)
    return [
        mc_smoe_layer(layer_experts(b), router_weight(b), s, keep, align=False)
        for b, s in zip(moe_blocks(model), stats)
    ]


def score(model, tok, tasks: list[str], limit: int) -> float:
    return statistics.mean(evaluate_lm_task(model, tok, task_dir(t), limit).score for t in tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tests' quick zoo")
    ap.add_argument("--limit", type=int, default=200, help="test items per skill")
    ap.add_argument("--keep", type=int, nargs="+", default=[6, 4], help="experts kept per layer")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="K-means seeds")
    ap.add_argument("--tables", nargs="+", default=["merge", "compress"], help="merge, compress")
    ap.add_argument(
        "--compress",
        nargs="+",
        default=["rank=16,sparsity=0.9", "rank=8,sparsity=0.9"],
        help="MC-SMoE compression settings (--compress of moe-reduce)",
    )
    ap.add_argument("--compress-steps", type=int, default=300, help="fine-tuning steps")
    args = ap.parse_args()
    torch.set_num_threads(1)

    tasks = lm_moe(args.quick).tasks
    model, tok = load_moe(str(build("lm-moe", quick=args.quick) / "moe"))
    stats = routing_stats(model, tok, read_lines(CALIBRATION))
    original = score(model, tok, tasks, args.limit)
    experts = model.config.num_local_experts
    print(f"lm-moe{' (quick)' if args.quick else ''}: {experts} experts per layer, top-2;")
    print(f"mean exact match over {', '.join(tasks)} ({args.limit} items each)\n")
    if "compress" in args.tables:
        compression_table(model, tok, stats, tasks, args, original)
    if "merge" not in args.tables:
        return
    head = " | ".join(
        f"{k} experts ({1 - k / experts:.0%} fewer): folder / shared" for k in args.keep
    )
    print(f"| method | {head} |")
    print("|---|" + "---|" * len(args.keep))
    print(
        f"| original ({experts} experts) | "
        + " | ".join(f"{original:.3f}" for _ in args.keep)
        + " |"
    )
    for label, method, rank in VARIANTS:
        seeds = args.seeds if method in ("sub-moe", "average") else [0]  # MC-SMoE draws nothing
        cells = []
        for keep in args.keep:
            folder, shared = [], []
            for seed in seeds:
                layers = layers_for(model, stats, method, keep, seed, rank)
                folder.append(score(reduced_model(model, layers), tok, tasks, args.limit))
                shared.append(score(shared_model(model, layers), tok, tasks, args.limit))
            f, s = statistics.mean(folder), statistics.mean(shared)
            cells.append(f"{f:.3f} ({f / original:.0%}) / {s:.3f} ({s / original:.0%})")
        print(f"| {label} | " + " | ".join(cells) + " |")


def _dense_counts(model) -> tuple[int, float]:
    cfg = model.config
    macs = linear_macs(cfg, 3 * cfg.hidden_size * cfg.intermediate_size)
    return sum(p.numel() for p in model.parameters()), macs


def compression_table(model, tok, stats, tasks, args, original: float) -> None:
    """Score kept, parameters and MACs a token, with and without MC-SMoE's compression."""
    lines = calibration_lines("lm-moe", n=4096, seed=1)
    params0, macs0 = _dense_counts(model)

    def cell(score: float, params: int, macs: float) -> str:
        return (
            f"{score:.3f} ({score / original:.0%}) / {params:,} ({params / params0:.0%}) / "
            f"{macs / macs0:.0%}"
        )

    rows: dict[str, list[str]] = {}
    for keep in args.keep:
        layers = layers_for(model, stats, "mc-smoe", keep, 0, 1.0)
        small = reduced_model(model, layers)
        rows.setdefault("M-SMoE merge, no fine-tuning", []).append(
            cell(score(small, tok, tasks, args.limit), *_dense_counts(small))
        )
        opts = parse_compress(f"rank=1,sparsity=0,steps={args.compress_steps}")
        tuned = reduced_model(model, layers)
        compress_and_finetune(tuned, model, tok, lines, opts, compress=False)
        rows.setdefault("M-SMoE merge + the same fine-tuning, dense", []).append(
            cell(score(tuned, tok, tasks, args.limit), *_dense_counts(tuned))
        )
        for spec in args.compress:
            opts = parse_compress(f"{spec},steps={args.compress_steps}")
            small = reduced_model(model, layers)
            report, _ = compress_reduced(small, model, tok, lines, opts)
            p, m = report["parameters"]["factored"], report["macs_per_token"]["factored"]
            label = f"MC-SMoE, rank {opts.rank}, sparsity {opts.sparsity}"
            rows.setdefault(label, []).append(cell(score(small, tok, tasks, args.limit), p, m))
    experts = model.config.num_local_experts
    head = " | ".join(f"{k} experts ({1 - k / experts:.0%} fewer)" for k in args.keep)
    print("score (kept) / parameters (of the original) / MACs a token (of the original)\n")
    print(f"| form | {head} |")
    print("|---|" + "---|" * len(args.keep))
    print(
        f"| original ({experts} experts) | "
        + " | ".join(cell(original, params0, macs0) for _ in args.keep)
        + " |"
    )
    for label, cells in rows.items():
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()


if __name__ == "__main__":
    main()
