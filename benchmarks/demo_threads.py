"""The demo's search, idle and beside a CPU hog, with torch's old default threads (one per core)
and with evomerge's automatic choice (workers/threads.py), side by side in one run.

    python benchmarks/demo_threads.py [--evals 48] [--runs 3]

Each run is `evomerge search experiments/toy_ps_cmaes.yaml --max-evals N` in a fresh run folder
(the zoo must be built: `evomerge zoo build lm-skills`), timed from the process start to its
end. "old" pins `evaluation.threads` to the core count (what torch chose before: one
thread per core); "auto" leaves it unset. The hog is a Python busy loop on one core, started
a second before the search. Prints the median wall time of each cell and the ratios; the load
average before and after. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "toy_ps_cmaes.yaml"


def experiment(tmp: Path, threads: int | None) -> Path:
    """The demo's YAML with its zoo references kept and, for "old", threads pinned."""
    text = DEMO.read_text()
    if threads is not None:
        text = text.replace("  timeout_s: 120", f"  timeout_s: 120\n  threads: {threads}")
    # paths inside the experiment are relative to its folder: keep it beside the original
    path = DEMO.parent / f".bench-{os.getpid()}-{threads or 'auto'}.yaml"
    path.write_text(text)
    return path


def one_search(exp: Path, evals: int, run_dir: Path) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "evomerge", "search", str(exp), "--run-dir", str(run_dir)]
    cmd += ["--max-evals", str(evals), "--max-seconds", "3600"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def timed(exp: Path, evals: int, tmp: Path, hog: bool, tag: str) -> float:
    proc = None
    if hog:
        proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
    try:
        return one_search(exp, evals, tmp / f"{tag}-{time.monotonic_ns()}")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evals", type=int, default=48)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"load before {os.getloadavg()[0]:.2f}; {cores} cores; {args.evals} evaluations a run")
    cells = {(t, h): [] for t in ("old", "auto") for h in (False, True)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        exps = {"old": experiment(tmp, cores), "auto": experiment(tmp, None)}
        try:
            for r in range(args.runs):  # alternate the cells so drift hits them alike
                for (t, h), times in cells.items():
                    times.append(timed(exps[t], args.evals, tmp, h, f"{t}-{h}-{r}"))
                    print(f"  run {r} {t:<4} {'hog' if h else 'idle'}: {times[-1]:.1f} s")
        finally:
            for p in exps.values():
                p.unlink(missing_ok=True)
    med = {k: statistics.median(v) for k, v in cells.items()}
    print(f"load after {os.getloadavg()[0]:.2f}")
    print(f"{'threads':<8}{'idle s':>10}{'hog s':>10}{'hog/idle':>10}")
    for t in ("old", "auto"):
        i, h = med[(t, False)], med[(t, True)]
        print(f"{t:<8}{i:>10.1f}{h:>10.1f}{h / i:>10.2f}")
    print(f"old/auto beside the hog: {med[('old', True)] / med[('auto', True)]:.2f}x")
    print(f"old/auto idle: {med[('old', False)] / med[('auto', False)]:.2f}x")


if __name__ == "__main__":
    main()
