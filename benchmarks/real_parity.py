"""Parity with mergekit 0.1.5 on real-model-derived folders: every operator both tools have, the
same YAML merged by mergekit and by ``evomerge merge``, every tensor compared. Prints a table.

    python benchmarks/real_parity.py [--model smollm2|gemma3] [--layers 4] [--vocab N]
                                     [--dtype float32|bfloat16] [--only ties,slerp]

Models: tests/helpers/real_variants.py (the real model's first --layers layers, three
fine-tune-like variants). ``--dtype bfloat16`` merges bf16-stored variants in bf16 with both
tools, and in float32 with both: columns say how far each tool's bf16 output is from its own
float32 merge (mean |x - ref| over all elements; its own, so that TIES ties resolved
differently by the two tools do not count as bf16 error) and, where the two bf16 outputs
differ, which tool is closer. DARE/DELLA run at density 1 (their deterministic part); their masks at
density < 1 are compared by statistics in tests/test_real_parity.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.helpers.parity_configs import CONFIGS
from tests.helpers.parity_run import compare, merge_both, tensors
from tests.helpers.real_variants import family


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", choices=("smollm2", "gemma3"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=None, help="keep the first N embedding rows")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--only", default="", help="comma-separated config names")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    names = a.only.split(",") if a.only else list(CONFIGS)
    configs = {n: CONFIGS[n] for n in names}
    base, vs = family(a.model, a.layers, a.vocab, dtype=a.dtype)
    fam = {"BASE": base, **{f"V{i}": v for i, v in enumerate(vs)}}
    root = Path(a.workdir or tempfile.mkdtemp(prefix="real_parity_"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out = merge_both(configs, fam, root, a.dtype)
    refs = merge_both(configs, fam, root, "float32") if a.dtype == "bfloat16" else {}
    print(
        f"{a.model} L{a.layers} vocab={a.vocab or 'all'} dtype={a.dtype}; merged in "
        f"{time.perf_counter() - t0:.0f} s; outputs under {root}"
    )
    head = "| config | elements | differing | fraction | max abs diff | worst tensor |"
    if refs:
        head += " mean err mk | mean err em | em closer | mk closer |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name in names:
        mk_dir, em_dir = out[name]
        ref = (tensors(refs[name][0]), tensors(refs[name][1])) if refs else None
        d = compare(tensors(mk_dir), tensors(em_dir), ref)
        row = f"| {name} | {d.numel} | {d.differing} | {d.frac:.2e} | {d.max_abs:.3g} | {d.worst} |"
        if refs:
            row += (
                f" {d.err_mk / d.numel:.3g} | {d.err_em / d.numel:.3g} | "
                f"{d.em_closer / max(d.differing, 1):.1%} | "
                f"{d.mk_closer / max(d.differing, 1):.1%} |"
            )
        print(row, flush=True)


if __name__ == "__main__":
    main()
