"""On a machine with an NVIDIA GPU: do merges and searches on CUDA give what they give on CPU?

Two parts, each printed as a table (and written to OUT/cuda_parity.json):

* ``merges``: every recipe of merge_bytes_equal.py (every operator, merge_speed.py's Llama-shaped
  bf16 base + 3 experts at ``--size``) merged with ``evomerge merge --device cpu`` and
  ``--device cuda``; per recipe: byte-identical or not, the share of elements that differ and
  the largest difference relative to the tensor's largest magnitude.
* ``search``: a short serial search of the README's demo (experiments/toy_ps_cmaes.yaml,
  ``--evals`` candidates) on CPU float32, CUDA float32 and CUDA bfloat16: the same genomes are
  asked (the driver is seeded and its first generation does not depend on scores), so the
  per-candidate fitness can be compared one to one; and candidates per minute.

    python benchmarks/cuda_parity.py [--size tiny] [--evals 16] [--out /tmp/cuda_parity]
        [--parts merges,search] [--only ties,della] [--gpu cuda:0]

Needs the CUDA build of torch and `pip install -e ".[search,zoo]"`; no Ray, no lm-eval.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import merge_bytes_equal  # noqa: E402  (every operator's recipe)
import merge_speed  # noqa: E402  (the benchmark's model builder)


def _evomerge(*args: str) -> None:
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    r = subprocess.run([sys.executable, "-m", "evomerge", *args], env=env, capture_output=True,
                       text=True, cwd=REPO)  # fmt: skip
    if r.returncode:
        raise RuntimeError(f"evomerge {' '.join(args)} failed:\n{r.stderr[-2000:]}")


def compare_folders(a: Path, b: Path) -> dict:
    """Byte equality of the weight files, then per element: how many differ, and the largest
    difference relative to the tensor's largest magnitude."""
    from safetensors.torch import load_file

    files = sorted(p.name for p in a.glob("*.safetensors"))
    same_bytes = all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    n = differ = 0
    worst = 0.0
    for f in files:
        ta, tb = load_file(str(a / f)), load_file(str(b / f))
        for name, x in ta.items():
            x, y = x.float(), tb[name].float()
            d = (x - y).abs()
            n += d.numel()
            differ += int((d > 0).sum())
            scale = max(float(x.abs().max()), 1e-30)
            worst = max(worst, float(d.max()) / scale)
    return {"identical": same_bytes, "share_differ": differ / max(n, 1), "max_rel": worst}


def merges(out: Path, size: str, gpu: str, only: list[str]) -> list[dict]:
    cache = Path(os.environ.get("EVOMERGE_CACHE") or Path.home() / ".cache" / "evomerge")
    folders = merge_speed.build(cache / "bench", size)
    rows = []
    for name in only or sorted(merge_bytes_equal.RECIPES):
        f = out / f"{name}.yaml"
        f.write_text(merge_bytes_equal.recipe(name, folders))
        row = {"recipe": name}
        try:
            for label, device in (("cpu", "cpu"), ("cuda", gpu)):
                t0 = time.perf_counter()
                _evomerge("merge", str(f), "--out", str(out / f"{name}-{label}"), "--device",
                          device, "--overwrite", "-q")  # fmt: skip
                row[f"{label}_s"] = round(time.perf_counter() - t0, 2)
            row |= compare_folders(out / f"{name}-cpu", out / f"{name}-cuda")
        except Exception as exc:  # report and go on: one failing operator is a finding
            row["error"] = str(exc).splitlines()[-1][:300]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _search(out: Path, label: str, device: str, dtype: str, evals: int) -> dict:
    cfg = yaml.safe_load((REPO / "experiments" / "toy_ps_cmaes.yaml").read_text())
    cfg["evaluation"] = {**cfg.get("evaluation", {}), "device": device, "dtype": dtype}
    cfg["budget"] = {"max_evals": evals}
    # beside the original so its relative references (presets) resolve the same way
    exp = REPO / "experiments" / f"_cuda_parity_{label}.yaml"
    exp.write_text(yaml.safe_dump(cfg))
    run_dir = out / f"search-{label}"
    t0 = time.perf_counter()
    try:
        _evomerge("search", str(exp), "--run-dir", str(run_dir))
    finally:
        exp.unlink()
    secs = time.perf_counter() - t0
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        rows = c.execute(
            "SELECT c.idx, c.digest, r.status, r.fitness, r.seconds FROM candidates c "
            "JOIN results r USING (idx) ORDER BY c.idx"
        ).fetchall()
    return {"label": label, "seconds": round(secs, 1), "rows": rows}


def search(out: Path, evals: int, gpu: str) -> dict:
    runs = {}
    for label, device, dtype in [("cpu_f32", "cpu", "float32"), ("cuda_f32", gpu, "float32"),
                                 ("cuda_bf16", gpu, "bfloat16")]:  # fmt: skip
        try:
            runs[label] = _search(out, label, device, dtype, evals)
        except Exception as exc:
            runs[label] = {"label": label, "error": str(exc)[-1500:]}
        r = runs[label]
        if "rows" in r:
            ok = [row for row in r["rows"] if row[2] == "OK"]
            best = max((row[3] for row in ok), default=None)
            per_min = 60 * len(r["rows"]) / r["seconds"]
            print(f"{label}: {len(ok)}/{len(r['rows'])} OK, best {best}, {r['seconds']} s "
                  f"with start-up ({per_min:.1f} candidates/min)", flush=True)  # fmt: skip
        else:
            print(f"{label}: FAILED {r['error'][-600:]}", flush=True)
    ref = runs.get("cpu_f32", {}).get("rows")
    for label in ("cuda_f32", "cuda_bf16"):
        rows = runs.get(label, {}).get("rows")
        if not (ref and rows):
            continue
        pairs = [(a, b) for a, b in zip(ref, rows, strict=False) if a[1] == b[1]]
        gaps = [abs(a[3] - b[3]) for a, b in pairs if a[2] == b[2] == "OK"]
        print(f"{label} vs cpu_f32: {len(pairs)} of {len(ref)} candidates with the same digest; "
              f"|fitness gap| max {max(gaps, default=float('nan')):.4f}, "
              f"{sum(g == 0 for g in gaps)} equal", flush=True)  # fmt: skip
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(merge_speed.SIZES), default="tiny")
    ap.add_argument("--evals", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("/tmp/cuda_parity"))
    ap.add_argument("--parts", default="merges,search")
    ap.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    ap.add_argument(
        "--gpu",
        default="cuda",
        help="the device compared with the CPU (cuda:N; cpu to try the script)",
    )
    args = ap.parse_args()
    import torch

    if args.gpu.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("cuda_parity.py: no CUDA device visible (needs an NVIDIA GPU)")
    gpu = torch.cuda.get_device_name(0) if args.gpu.startswith("cuda") else args.gpu
    print(f"{gpu}, torch {torch.__version__}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {}
    parts = args.parts.split(",")
    if "merges" in parts:
        result["merges"] = merges(
            args.out, args.size, args.gpu, [n for n in args.only.split(",") if n]
        )
    if "search" in parts:
        result["search"] = search(args.out, args.evals, args.gpu)
    (args.out / "cuda_parity.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
