"""Same searches, same results: a change to the search loop must not change what a search does.

Runs small searches through the CLI (the README's demo, M2N2, random search, Optuna, CMA-ES,
M2N2 on 2 local Ray workers, Frank-Wolfe and FW-Soft over a tiny LM pool built first, AdaMerging
on the lm-skills zoo for a few steps), then snapshots each store: every candidate (index,
generation, digest, genes, reuse, meta) with its result (status, fitness, objectives, scores,
error), the archive table, and the sha256 of every file of every archive folder (the winner is
rank 0). Timing columns (seconds, worker) are left out. Record with one checkout, check with
another:

    python benchmarks/loop_results_equal.py --record /tmp/before.json   # the old checkout
    python benchmarks/loop_results_equal.py --check /tmp/before.json    # the new one

``--only NAME`` runs one search. ``--legacy-resume OLD_TREE`` (with ``--check``) also starts the
random search with the old tree's code, SIGKILLs it once its first generation is committed (its
checkpoint then holds the batch asked ahead in the old format), resumes it with this tree, and
compares the result with the recorded uninterrupted one. The fast version on a cheap objective is tests/test_loop_golden.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"


def _variant(src: str, driver: dict, out: Path) -> Path:
    """An experiment file like ``src`` with another driver (written beside the run folders)."""
    cfg = yaml.safe_load((EXP / src).read_text())
    cfg["driver"] = driver
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


FW_YAML = """
name: fw_equal
models: [{members}]
base_model: {base}
space: {{kind: fw_pool, granularity: task, variant: {variant}, iterations: {iterations}}}
fitness:
  tasks: [{{kind: python, name: d, function: {fn}:dictionary_fitness}}]
driver: {{name: frank_wolfe, options: {{{options}proxy: {{kind: lm, data: {proxy}, n: 12}}}}}}
archive: {{top_k: 2}}
"""


def _fw_pool() -> dict:
    """A tiny LM pool, trained once (as tests/test_resume_frank_wolfe.py's: seeded, one thread)
    in a fixed folder of the cache: its paths are in every recipe, so two trees compared must
    search the same folders."""
    import torch

    import evomerge.zoo.lm_pool as lp
    from evomerge.io.cache import cache_root

    root = cache_root() / "bench" / "loop_results_equal_fw_pool"
    made = root / "pool.json"
    if not made.is_file():
        torch.set_num_threads(1)
        pool = lp.build_lm_pool(
            root / "pool", n_irrelevant=1, per_expert=4, base_steps=6, expert_steps=6
        )
        fields = {"members": [*pool.relevant, *pool.irrelevant], "base": pool.base}
        made.write_text(json.dumps({**fields, "proxy": pool.proxy}))
    return {**json.loads(made.read_text()), "fn": lp.__file__}  # this tree's fitness


def _fw(variant: str, iterations: int, options: str = ""):
    """A Frank-Wolfe experiment over the tiny LM pool."""

    def write(work: Path, out: Path) -> Path:
        pool = _fw_pool()
        text = FW_YAML.format(
            members=", ".join(pool["members"]),
            base=pool["base"],
            fn=pool["fn"],
            proxy=pool["proxy"],
            variant=variant,
            iterations=iterations,
            options=options,
        )
        out.write_text(text)
        return out

    return write


def _adamerging(steps: int):
    """The AdaMerging example with ``steps`` Adam updates instead of the paper's 500."""

    def write(work: Path, out: Path) -> Path:
        cfg = yaml.safe_load((EXP / "adamerging_lm_skills.yaml").read_text())
        cfg["driver"]["options"]["steps"] = steps
        out.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return out

    return write


# name -> (experiment file, variant, or a function writing one; max_evals; workers)
SEARCHES = {
    "demo_cmaes": ("toy_ps_cmaes.yaml", 24, 1),
    "m2n2": ("toy_m2n2.yaml", 16, 1),
    "random": (("toy_ps_cmaes.yaml", {"name": "random", "options": {"batch_size": 6}}), 16, 1),
    "optuna": ("toy_optuna.yaml", 16, 1),
    "m2n2_ray2": ("toy_m2n2.yaml", 16, 2),
    "frank_wolfe": (_fw("task_arithmetic", 5), 20, 1),
    "frank_wolfe_soft": (_fw("soft", 2, "soft_steps: 2, "), 20, 1),
    "adamerging": (_adamerging(4), 20, 1),
}


def _search_cmd(name: str, work: Path) -> tuple[list[str], Path]:
    spec, max_evals, workers = SEARCHES[name]
    if isinstance(spec, str):
        exp = EXP / spec
    elif callable(spec):
        exp = spec(work, work / f"{name}.yaml")
    else:
        exp = _variant(*spec, work / f"{name}.yaml")
    run_dir = work / name
    cmd = [sys.executable, "-m", "evomerge.cli", "search", str(exp), "--run-dir", str(run_dir)]
    cmd += ["--max-evals", str(max_evals), "--max-seconds", "100000", "--workers", str(workers)]
    return cmd, run_dir


def _run(cmd: list[str], root: Path, what: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what}: failed\n{done.stderr[-3000:]}")


def run_search(name: str, work: Path) -> Path:
    cmd, run_dir = _search_cmd(name, work)
    _run(cmd, ROOT, name)
    return run_dir


def legacy_resume(old_tree: Path, work: Path) -> Path:
    """The random search started by the old code, killed after generation 0, resumed here."""
    work.mkdir(parents=True, exist_ok=True)
    cmd, run_dir = _search_cmd("random", work)
    env = {**os.environ, "PYTHONPATH": str(old_tree)}
    proc = subprocess.Popen(cmd, cwd=old_tree, env=env, stderr=subprocess.DEVNULL)
    db = run_dir / "store.sqlite"
    while proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                if conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]:
                    break
        except sqlite3.OperationalError:
            pass  # not created yet
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (blob,) = conn.execute("SELECT driver_state FROM checkpoints").fetchone()
    if "__ask_ahead__" not in pickle.loads(blob):
        raise SystemExit(
            f"{old_tree}: its checkpoint has no __ask_ahead__ batch (not the old code)"
        )
    _run([sys.executable, "-m", "evomerge.cli", "resume", str(run_dir)], ROOT, "legacy resume")
    return run_dir


def snapshot(run_dir: Path) -> dict:
    with sqlite3.connect(f"file:{run_dir / 'store.sqlite'}?mode=ro", uri=True) as conn:
        cands = conn.execute(
            "SELECT c.idx, c.generation, c.digest, c.genes_json, c.reused_from, c.meta_json,"
            " r.status, r.fitness, r.objectives_json, r.scores_json, r.error"
            " FROM candidates c JOIN results r USING (idx) ORDER BY c.idx"
        ).fetchall()
        archive = conn.execute("SELECT rank, digest, idx, fitness FROM archive ORDER BY rank")
        archive = [list(row) for row in archive]
    files = {}
    for path in sorted((run_dir / "archive").rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(run_dir / "archive"))
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"candidates": [list(row) for row in cands], "archive": archive, "files": files}


def differences(name: str, old: dict, new: dict) -> list[str]:
    out = []
    for key in ("candidates", "archive", "files"):
        if old[key] != new[key]:
            a, b = old[key], new[key]
            if isinstance(a, list):
                first = next(
                    (i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))
                )
                out.append(f"{name}: {key} differ from row {first} ({len(a)} vs {len(b)} rows)")
            else:
                out.append(f"{name}: {key} differ: {sorted(set(a.items()) ^ set(b.items()))[:4]}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, help="write the snapshots to this JSON file")
    mode.add_argument("--check", type=Path, help="compare with snapshots recorded earlier")
    p.add_argument("--only", choices=sorted(SEARCHES), action="append")
    p.add_argument("--legacy-resume", type=Path, metavar="OLD_TREE")
    args = p.parse_args()
    names = args.only or list(SEARCHES)
    with tempfile.TemporaryDirectory(prefix="loop-equal-") as tmp:
        got = {n: snapshot(run_search(n, Path(tmp))) for n in names}
        if args.legacy_resume:
            legacy = snapshot(legacy_resume(args.legacy_resume, Path(tmp) / "legacy"))
    for n in names:
        s = got[n]
        print(
            f"{n}: {len(s['candidates'])} candidates, {len(s['archive'])} archived, "
            f"winner {s['archive'][0][1] if s['archive'] else None}"
        )
    if args.record:
        args.record.write_text(json.dumps(got))
        return
    old = json.loads(args.check.read_text())
    diffs = [d for n in names for d in differences(n, old[n], got[n])]
    if args.legacy_resume:
        diffs += differences("random (old code killed, resumed)", old["random"], legacy)
    print("\n".join(diffs) or f"identical: {', '.join(names)}")
    raise SystemExit(1 if diffs else 0)


if __name__ == "__main__":
    main()
