"""Merges a racing search does, with and without skipping the merge of a resident candidate.

Counts, not timings: the same serial racing search on lm-skills is run twice, once merging
every slice's candidate (as before) and once skipping the merge when the worker's model holds
the candidate already (``Materializer.materialize``; rounds submitted in reverse order,
``Racer.submission_order``). Prints the merges of each and checks that the two stores are
byte-identical (candidates, per-item values, archive, checkpoints).

    python benchmarks/racing_merges.py --driver cma_es --evals 12
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path

from evomerge.racing import Racer
from evomerge.search_cli import search
from evomerge.store import STORE_FILE, RunStore
from evomerge.workers.materialize import TALLY, Materializer

DRIVERS = {
    "cma_es": "{name: cma_es, options: {popsize: 6, sigma0: 0.3}}",
    "random": "{name: random, options: {batch_size: 6}}",
}


def experiment(folder: Path, driver: str, evals: int, items: int, first: int, step: int) -> Path:
    models = "".join(f"\n  - zoo:lm-skills/{e}" for e in ("cipher", "shift", "sort", "reverse"))
    path = folder / "exp.yaml"
    path.write_text(
        f"""name: racing_merges
models:{models}
base_model: zoo:lm-skills/base
space: {{preset: ps_dare_ties, layer_groups: 1, x0: {{weight: 0.25}}}}
fitness:
  tasks:
    - {{kind: zoo, name: skills, evaluator: skills, options: {{limit: {items}}}}}
  racing: {{first_slice: {first}, slice: {step}}}
driver: {DRIVERS[driver]}
budget: {{max_evals: {evals}}}
seed: 3
archive: {{top_k: 2}}
"""
    )
    return path


def snapshot(run: Path) -> tuple:
    with sqlite3.connect(f"file:{run / STORE_FILE}?mode=ro", uri=True) as conn:
        return tuple(
            conn.execute(q).fetchall()
            for q in (
                "SELECT c.idx, c.digest, c.genes_json, c.meta_json, r.status, r.fitness,"
                " r.scores_json, r.per_example_json FROM candidates c JOIN results r"
                " USING (idx) ORDER BY idx",
                "SELECT rank, digest, idx, fitness FROM archive ORDER BY rank",
                "SELECT generation, n_candidates, n_evals FROM checkpoints ORDER BY generation",
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--driver", choices=sorted(DRIVERS), default="cma_es")
    ap.add_argument("--evals", type=int, default=12, help="candidates (budget.max_evals)")
    ap.add_argument("--items", type=int, default=12, help="items per skill (4 skills)")
    ap.add_argument("--first-slice", type=int, default=8)
    ap.add_argument("--slice", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        exp = experiment(root, args.driver, args.evals, args.items, args.first_slice, args.slice)
        rows, snaps = [], []
        for resident in (False, True):
            Materializer.reuse_resident = Racer.resident_order = resident
            merges, reused = TALLY.merges, TALLY.reused
            run = root / f"run{int(resident)}"
            if search(exp, run) != 0:
                raise SystemExit(f"the search in {run} failed")
            with RunStore.open(run, readonly=True) as st:
                items = st.item_evals()
            rows.append((resident, TALLY.merges - merges, TALLY.reused - reused, items))
            snaps.append(snapshot(run))
    print("| skip resident | merges | merges skipped | item evals |\n|---|---|---|---|")
    for resident, merges, reused, items in rows:
        print(f"| {'yes' if resident else 'no'} | {merges} | {reused} | {items} |")
    print(f"stores byte-identical: {snaps[0] == snaps[1]}")


if __name__ == "__main__":
    main()
