"""Merge speed and memory: ``evomerge merge`` vs ``mergekit-yaml`` on a Llama-shaped random model.

Builds once (cached under ${EVOMERGE_CACHE:-~/.cache/evomerge}/bench/) a bf16 base and 3 experts
(base + small noise) of about 0.5B parameters, then for each method runs both tools on the same
YAML, alternating, ``--runs`` times each, and prints median wall time, peak RSS, their ratios,
and our effective GB/s (input + output bytes / wall) against a sequential read+write of the same
bytes measured on this machine. Both compute in float32 and write bf16.

    python benchmarks/merge_speed.py                       # ~0.5B, ties dare_ties linear slerp, 3 runs
    python benchmarks/merge_speed.py --size small --methods ties,linear   # ~0.1B, quicker
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

SIZES = {  # hidden, intermediate, layers, vocab, heads
    "0.5b": (1024, 4096, 24, 32000, 16),
    "small": (512, 2048, 16, 32000, 8),
}
METHODS = {
    "ties": "merge_method: ties\nbase_model: B\nmodels:\n{experts}\nparameters: {{density: 0.5, weight: 0.33}}\n",
    "dare_ties": "merge_method: dare_ties\nbase_model: B\nmodels:\n{experts}\nparameters: {{density: 0.5, weight: 0.33}}\n",
    "linear": "merge_method: linear\nmodels:\n  - model: B\n{experts}\nparameters: {{weight: 0.25}}\n",
    "slerp": "merge_method: slerp\nbase_model: B\nmodels:\n  - model: B\n  - model: E0\nparameters: {{t: 0.5}}\n",
}
RUN = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "sys.stderr.write(r.stderr[-2000:] if r.returncode else '')\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(r.returncode)\n"
)


def build(root: Path, size: str) -> list[Path]:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    h, inter, layers, vocab, heads = SIZES[size]
    folders = [root / size / n for n in ("base", "e0", "e1", "e2")]
    if all((f / "model.safetensors").is_file() for f in folders):
        return folders
    cfg = LlamaConfig(
        hidden_size=h,
        intermediate_size=inter,
        num_hidden_layers=layers,
        vocab_size=vocab,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(cfg).named_parameters()}
    g = torch.Generator().manual_seed(0)
    base = {n: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    for i, f in enumerate(folders):
        tmp = f.parent / f".{f.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cfg.dtype = "bfloat16"
        cfg.save_pretrained(tmp)
        t = (
            base
            if i == 0
            else {
                n: (v.float() + 0.002 * torch.randn(v.shape, generator=g)).to(torch.bfloat16)
                for n, v in base.items()
            }
        )
        save_file(t, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.rmtree(f, ignore_errors=True)
        os.replace(tmp, f)
    return folders


def config(method: str, folders: list[Path], path: Path) -> tuple[Path, int]:
    experts = "\n".join(f"  - model: E{i}" for i in range(3))
    text = METHODS[method].format(experts=experts)
    for i, f in enumerate(folders[1:]):
        text = text.replace(f"E{i}", str(f))
    text = text.replace("base_model: B", f"base_model: {folders[0]}").replace(
        "model: B\n", f"model: {folders[0]}\n"
    )
    path.write_text(text + "dtype: float32\nout_dtype: bfloat16\n")
    used = [f for f in folders if str(f) in text]
    return path, sum((f / "model.safetensors").stat().st_size for f in used)


def timed(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RUN, *cmd], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return wall, int(r.stdout.strip()) / 1024  # MiB


def baseline(files: list[Path], out_bytes: int, scratch: Path) -> float:
    """Seconds to read ``files`` sequentially and write ``out_bytes`` (64 MiB chunks)."""
    t0 = time.perf_counter()
    chunk = 64 << 20
    for f in files:
        with open(f, "rb", buffering=0) as h:
            while h.read(chunk):
                pass
    buf = os.urandom(chunk)
    with open(scratch / "baseline.bin", "wb") as h:
        left = out_bytes
        while left > 0:
            h.write(buf[: min(chunk, left)])
            left -= chunk
    (scratch / "baseline.bin").unlink()
    return time.perf_counter() - t0


ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    ap.add_argument("--methods", default="ties,dare_ties,linear,slerp")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    load0 = os.getloadavg()
    cache = Path(os.environ.get("EVOMERGE_CACHE", Path.home() / ".cache" / "evomerge")) / "bench"
    folders = build(cache, args.size)
    mk = shutil.which("mergekit-yaml") or str(Path(sys.executable).parent / "mergekit-yaml")
    rows = []
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        scratch = Path(tmp)
        for method in args.methods.split(","):
            cfg, in_bytes = config(method, folders, scratch / f"{method}.yaml")
            out_bytes = (folders[0] / "model.safetensors").stat().st_size
            ours, theirs = [], []
            for _ in range(args.runs):  # alternate so drift in machine load hits both
                theirs.append(timed([mk, str(cfg), str(scratch / "mk")]))
                shutil.rmtree(scratch / "mk", ignore_errors=True)
                ours.append(
                    timed(
                        [
                            sys.executable,
                            "-m",
                            "evomerge",
                            "merge",
                            str(cfg),
                            "--out",
                            str(scratch / "em"),
                            "-q",
                        ]
                    )
                )
                shutil.rmtree(scratch / "em", ignore_errors=True)
            used = [f / "model.safetensors" for f in folders if str(f) in cfg.read_text()]
            base_s = statistics.median(baseline(used, out_bytes, scratch) for _ in range(3))
            rows.append(_row(method, ours, theirs, in_bytes + out_bytes, base_s))
    _print(rows, args, load0)


def _row(method, ours, theirs, nbytes, base_s) -> dict:
    ow, orss = statistics.median(w for w, _ in ours), statistics.median(r for _, r in ours)
    mw, mrss = statistics.median(w for w, _ in theirs), statistics.median(r for _, r in theirs)
    return {
        "method": method,
        "ours_s": ow,
        "mergekit_s": mw,
        "time_ratio": ow / mw,
        "ours_rss_mib": orss,
        "mergekit_rss_mib": mrss,
        "rss_ratio": orss / mrss,
        "ours_gbps": nbytes / ow / 1e9,
        "baseline_gbps": nbytes / base_s / 1e9,
        "of_baseline": base_s / ow,
    }


def _print(rows: list[dict], args, load0: tuple[float, float, float]) -> None:
    # Other jobs share the cores: ratios come from alternating runs, the load says how noisy.
    load = (
        " ".join(f"{x:.2f}" for x in load0) + " -> " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    print(f"size={args.size} runs={args.runs} cpus={os.cpu_count()} torch threads default")
    print(f"load average (1/5/15 min) at start -> end: {load}")
    head = f"{'method':10} {'ours s':>8} {'mk s':>8} {'t ratio':>8} {'ours MiB':>9} {'mk MiB':>9} {'rss ratio':>9} {'ours GB/s':>9} {'base GB/s':>9} {'of base':>8}"
    print(head)
    for r in rows:
        print(
            f"{r['method']:10} {r['ours_s']:8.1f} {r['mergekit_s']:8.1f} {r['time_ratio']:8.2f} "
            f"{r['ours_rss_mib']:9.0f} {r['mergekit_rss_mib']:9.0f} {r['rss_ratio']:9.2f} "
            f"{r['ours_gbps']:9.3f} {r['baseline_gbps']:9.3f} {r['of_baseline']:8.0%}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
