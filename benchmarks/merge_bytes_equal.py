"""Merged bytes of two source trees compared with ``cmp``: every operator, fused and eager.

A refactor that must change no result (e.g. moving the fast paths) is checked by merging the same
recipes with an old checkout and the current one and comparing every written file byte for byte.
The models are merge_speed.py's Llama-shaped bf16 base and 3 experts (``--size``; ``tiny`` is
small enough for a shared CPU). Each recipe runs twice per tree: with the C kernel and with
``EVOMERGE_FUSED=0`` (the eager path); ``--paths fused`` runs the first only (at ``0.5b`` the eager
TIES-family merges take minutes each on one thread).

    git archive OLD_COMMIT | tar -x -C /tmp/old
    python benchmarks/merge_bytes_equal.py --old /tmp/old --size tiny
    python benchmarks/merge_bytes_equal.py --old /tmp/old --size 0.5b --paths fused
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import merge_speed  # noqa: E402  (the benchmark's model builder)

merge_speed.SIZES["tiny"] = (128, 512, 2, 32000, 4)  # 4.2M-entry embeddings: radix top-k runs

GTA = "base_model: B\nmodels:\n{experts}\nparameters: {{weight: 0.33, density: 0.5{extra}}}\n"
EXPERTS = "\n".join(f"  - model: E{i}" for i in range(3))
RECIPES = {
    "linear_bf16": "models:\n  - model: B\n{experts}\nparameters: {{weight: 0.25}}\n",
    "linear_f32": "models:\n  - model: B\n{experts}\nparameters: {{weight: 0.25}}\n",
    "slerp": "base_model: B\nmodels:\n  - model: B\n  - model: E0\nparameters: {{t: 0.3}}\n",
    "nuslerp": "models:\n  - model: E0\n  - model: E1\nparameters: {{weight: 0.5}}\n",
    "nuslerp_ta": "base_model: B\nmodels:\n  - model: E0\n  - model: E1\nparameters: {{weight: 0.5}}\n",
    "multislerp": "models:\n{experts}\nparameters: {{weight: 0.33}}\n",
    "multislerp_ta": "base_model: B\nmodels:\n{experts}\nparameters: {{weight: 0.33}}\n",
    "model_stock": "base_model: B\nmodels:\n{experts}\n",
    "consensus": "base_model: B\nmodels:\n{experts}\n",
    "pcb": "base_model: B\nmodels:\n{experts}\n",
    "tsv": "base_model: B\nmodels:\n{experts}\n",
    "passthrough": "models:\n  - model: E0\nparameters: {{scale: 0.5}}\n",
}
METHOD = {"linear_bf16": "linear", "linear_f32": "linear", "nuslerp_ta": "nuslerp"}
METHOD["multislerp_ta"] = "multislerp"
for op in ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs"):
    RECIPES[op] = GTA.replace("{extra}", "")
for op in ("breadcrumbs_ties", "della", "della_linear"):
    RECIPES[op] = GTA.replace("{extra}", "")
# the cases the fused kernel leaves to other paths: a rescaled TIES, λ and normalize
RECIPES["ties_rescale"] = GTA.replace("{extra}", ", rescale: true, lambda: 0.7")
RECIPES["dare_ties_norm"] = GTA.replace("{extra}", ", normalize: true, lambda: 1.3")
RECIPES["task_arithmetic_d1"] = GTA.replace("density: 0.5{extra}", "density: 1.0")
METHOD.update(ties_rescale="ties", dare_ties_norm="dare_ties", task_arithmetic_d1="task_arithmetic")


def recipe(name: str, folders: list[Path]) -> str:
    text = RECIPES[name].format(experts=EXPERTS)
    for i, f in enumerate(folders[1:]):
        text = text.replace(f"E{i}", str(f))
    text = text.replace("base_model: B", f"base_model: {folders[0]}")
    text = text.replace("model: B\n", f"model: {folders[0]}\n")
    out_dtype = "float32" if name == "linear_f32" else "bfloat16"
    return f"merge_method: {METHOD.get(name, name)}\nseed: 7\n{text}out_dtype: {out_dtype}\n"


def merge(tree: Path, recipe_file: Path, out: Path, fused: bool) -> None:
    env = {**merge_speed.ENV, "PYTHONPATH": str(tree), "EVOMERGE_FUSED": "1" if fused else "0"}
    cmd = [sys.executable, "-m", "evomerge", "merge", str(recipe_file), "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    if r.returncode:
        raise SystemExit(f"{tree}: {recipe_file.name} failed\n{r.stderr[-3000:]}")


def same_folders(a: Path, b: Path) -> list[str]:
    """Names of the files that differ (or exist on one side only)."""
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    return [n for n in names if not (a / n).is_file() or not (b / n).is_file()
            or not filecmp.cmp(a / n, b / n, shallow=False)]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the old source tree (git archive)")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--size", choices=sorted(merge_speed.SIZES), default="tiny")
    ap.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    ap.add_argument("--paths", default="fused,eager", help="fused, eager or both (the default)")
    args = ap.parse_args()
    paths = args.paths.split(",")
    if set(paths) - {"fused", "eager"}:
        ap.error(f"--paths: {args.paths!r} is not fused, eager or fused,eager")
    cache = Path(os.environ.get("EVOMERGE_CACHE") or Path.home() / ".cache" / "evomerge")
    folders = merge_speed.build(cache / "bench", args.size)
    names = args.only.split(",") if args.only else sorted(RECIPES)
    bad = []
    with tempfile.TemporaryDirectory(prefix="evomerge-cmp-") as tmp:
        root = Path(tmp)
        for name in names:
            f = root / f"{name}.yaml"
            f.write_text(recipe(name, folders))
            for fused in [path == "fused" for path in paths]:
                outs = []
                for label, tree in (("old", args.old), ("new", args.new)):
                    out = root / f"{name}-{label}-{int(fused)}"
                    merge(tree, f, out, fused)
                    outs.append(out)
                diff = same_folders(*outs)
                mode = "fused" if fused else "eager"
                print(f"{name:20s} {mode}: {'identical' if not diff else 'DIFFER ' + str(diff)}")
                bad += [(name, mode)] if diff else []
                for o in outs:
                    subprocess.run(["rm", "-rf", str(o)], check=True)
    runs = len(names) * len(paths)
    print(f"{runs - len(bad)} of {runs} merges byte-identical")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
