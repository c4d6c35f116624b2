"""MC-SMoE's compressed experts, dense folder against factored folder: what each holds and costs.

    python benchmarks/moe_factored.py DENSE [--limit 200]      # a folder from moe-reduce --compress
    python benchmarks/moe_factored.py --synthetic [--hidden 512 --intermediate 1792 ...]

DENSE is a folder ``evomerge moe-reduce ... --compress rank=R,sparsity=X`` wrote (default form);
its factored form is written beside it in a temporary folder (``factored_from_dense``, removed
at the end). For each form: parameters held by the loaded model, the weights file's bytes, the
peak resident memory a fresh process adds to load the folder and run one forward (its own
process each: /proc/self/status VmHWM after load + forward, reset to VmRSS just before the load
through /proc/self/clear_refs), the largest logit difference, and the zoo score (exact match
over the four skills, ``--limit`` items each, greedy). A forward's time on one thread is shown
as a ratio, labelled with the load average: indicative only on a shared machine.

lm-moe's experts are 1.2 MB of float32: a difference that small is lost in the process's own
allocations, so ``--synthetic`` builds a random Mixtral big enough to show it (no training: each
expert matrix SVD-truncated to ``--rank``, and the largest-norm share ``1 - sparsity`` of the
residual's rows kept; the shapes, not the values, set memory and multiply-adds), writes it in
both forms and measures the same, without scores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(folder: str, tokens: int, repeats: int) -> dict:
    """In this (fresh) process: memory load + forward adds, and the median forward time."""
    import torch
    from transformers import AutoModelForCausalLM

    from evomerge.moe.factored_folder import is_factored_folder
    from evomerge.moe.modeling_mc_smoe import McSmoeFactoredForCausalLM

    torch.set_num_threads(1)
    loader = McSmoeFactoredForCausalLM if is_factored_folder(folder) else AutoModelForCausalLM
    vocab = json.loads((Path(folder) / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab, (4, tokens), generator=torch.Generator().manual_seed(0))
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = rss_kb("VmRSS")
    model = loader.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(ids).logits
        peak = rss_kb("VmHWM")
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - t)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_added_mb": (peak - before) / 1024,
        "forward_s": statistics.median(times),
        "logits": logits[0, :8, :8].tolist(),  # a corner, to compare the forms
    }


def in_child(folder: Path, tokens: int, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--measure", str(folder), "--tokens", str(tokens)]
    out = subprocess.run(
        [*cmd, "--repeats", str(repeats)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def synthetic(args, work: Path) -> tuple[Path, Path]:
    """A random Mixtral in both forms (see the module docstring)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from evomerge.moe.compress import block_matrices, low_rank_split
    from evomerge.moe.experts import moe_blocks
    from evomerge.moe.factored_folder import factored_model

    torch.manual_seed(0)
    cfg = MixtralConfig(
        vocab_size=512,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        num_local_experts=args.experts,
        num_experts_per_tok=2,
    )
    model = MixtralForCausalLM(cfg).eval()
    factors = {}
    names = {"gate": "w1", "up": "w3", "down": "w2"}
    for i, block in enumerate(moe_blocks(model)):
        dense = {}
        for m, stack in block_matrices(block).items():
            dense[m] = []
            for e, w in enumerate(stack):
                left, right = low_rank_split(w, args.rank)
                residual = w - left @ right
                k = round(w.shape[0] * (1 - args.sparsity))
                rows = residual.norm(dim=1).topk(k).indices.sort().values
                key = f"layers.{i}.experts.{e}.{names[m]}"
                factors[f"{key}.left"], factors[f"{key}.right"] = left, right
                factors[f"{key}.sparse_rows"] = residual[rows].contiguous()
                factors[f"{key}.sparse_index"] = rows.to(torch.int32)
                product = left @ right
                product[rows] += residual[rows]
                dense[m].append(product)
        with torch.no_grad():
            gate_up = torch.cat([torch.stack(dense["gate"]), torch.stack(dense["up"])], dim=1)
            block.experts.gate_up_proj.copy_(gate_up)
            block.experts.down_proj.copy_(torch.stack(dense["down"]))
    model.save_pretrained(work / "dense")
    factored_model(model, factors).save_pretrained(work / "factored")
    return work / "dense", work / "factored"


def scores(folder: Path, limit: int) -> float:
    from evomerge.commands.evaluate import load_model
    from evomerge.zoo.evaluate import evaluate_lm_task, task_dir
    from evomerge.zoo.specs import lm_moe

    model, tok = load_model(folder)  # the factored folder: evomerge's copy of its class
    tasks = lm_moe(False).tasks  # the four skills over all 16 letters
    return statistics.mean(evaluate_lm_task(model, tok, task_dir(t), limit).score for t in tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dense", nargs="?", help="a folder moe-reduce --compress wrote")
    ap.add_argument("--synthetic", action="store_true", help="a random Mixtral, larger")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1792)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--limit", type=int, default=200, help="test items per skill (0: no scores)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens a row of the forward (4 rows)")
    ap.add_argument("--repeats", type=int, default=5, help="forwards timed (median)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # the child process's entry
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.tokens, args.repeats)))
        return
    if not args.synthetic and not args.dense:
        ap.error("give DENSE (a folder moe-reduce --compress wrote) or --synthetic")
    work = Path(tempfile.mkdtemp(prefix="moe_factored_"))
    try:
        if args.synthetic:
            dense, factored = synthetic(args, work)
        else:
            from evomerge.moe.factored_folder import factored_from_dense

            dense, factored = Path(args.dense), factored_from_dense(args.dense, work / "factored")
        report(dense, factored, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(dense: Path, factored: Path, args) -> None:
    rows = {}
    for label, folder in (("dense", dense), ("factored", factored)):
        m = in_child(folder, args.tokens, args.repeats)
        m["bytes"] = (folder / "model.safetensors").stat().st_size
        if not args.synthetic and args.limit:
            m["score"] = scores(folder, args.limit)
        rows[label] = m
    d, f = rows["dense"], rows["factored"]
    diff = max(abs(a - b) for ra, rb in zip(d["logits"], f["logits"]) for a, b in zip(ra, rb))
    print(
        f"| form | parameters | weights file bytes | peak memory added by load + forward |"
        f"{' score |' if 'score' in d else ''}"
    )
    print(f"|---|---|---|---|{'---|' if 'score' in d else ''}")
    for label, m in rows.items():
        score = f" {m['score']:.3f} |" if "score" in m else ""
        print(
            f"| {label} | {m['parameters']:,} | {m['bytes']:,} | {m['peak_added_mb']:.1f} MB |"
            f"{score}"
        )
    print(f"largest logit difference (a corner of the first row): {diff:.2e}")
    print(
        f"forward of 4 x {args.tokens} tokens, one thread, median of {args.repeats}: factored / "
        f"dense = {f['forward_s'] / d['forward_s']:.2f} ({d['forward_s'] * 1e3:.1f} ms dense; "
        f"load average {os.getloadavg()[0]:.1f}: indicative only)"
    )


if __name__ == "__main__":
    main()
