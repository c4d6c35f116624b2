"""Twin-Merging (Lu et al., NeurIPS 2024, arXiv 2406.15479) against the best static merge on the
lm-skills zoo's mixed-task evaluation (every skill's items, each scored by exact match).

    python benchmarks/twin_merging.py [--search 50] [--ranks 4 16] [--shared LABEL ...] [--out DIR]
    python benchmarks/twin_merging.py --real   # SmolLM2 (tied) with LoRA experts: twin_merging_real.py

Items: per task, the first ``--search`` test items choose the static merge (and train the
router); every score in the table is on the items after them (validation), which neither saw.
Rows: the base, each expert, every static merge of a small grid (task arithmetic, TIES) with
the best one by search score marked, and Twin-Merging at each rank with two shared experts: the
authors' default (task arithmetic, weight 0.3) and the chosen static merge (and any given with
``--shared``). Two ablations: no shared knowledge (θ* = the base, v_t the whole task vector),
and each build's parts weighted 1/T without the router. For Twin-Merging the table also gives how often the router's top weight goes to the expert of the item's task, and
the bytes of the saved model (next to one plain model's and the five zoo models').
Deterministic: same zoo, same table (no timings).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import torch

from evomerge.merge.engine import iter_merged_tensors, plan
from evomerge.recipe import ModelRef, Recipe
from evomerge.zoo.build import build, load_manifest
from evomerge.zoo.evaluate import evaluate_skills, load_task_items, task_dir


def _zoo() -> tuple[Path, dict[str, str], dict[str, str]]:
    folder = build("lm-skills")
    models = load_manifest(folder)["models"]
    paths = {n: str(folder / m["path"]) for n, m in models.items()}
    tasks = {n: m["expert_in"] for n, m in models.items() if m["role"] == "expert"}
    return folder, paths, tasks


def _load(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()


def _scores(model, tok, limit: int | None, offset: int) -> dict[str, float]:
    res = evaluate_skills(model, tok, limit=limit, offset=offset)
    out = {t: s.score for t, s in res.items()}
    out["mean"] = sum(out.values()) / len(res)
    return out


def static_grid() -> dict[str, tuple[str, dict]]:
    """Task arithmetic over λ (λ = 1/4: the experts' mean, i.e. their uniform average) and TIES
    (the paper's disjoint mean, scaled by λ) over density and λ."""
    grid = {
        f"task_arithmetic λ={lam}": ("task_arithmetic", {"weight": lam})
        for lam in (0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0)
    }
    for d, lam in itertools.product((0.3, 0.6), (0.3, 0.5, 1.0)):
        grid[f"ties d={d} λ={lam}"] = ("ties", {"weight": 1.0, "density": d, "lambda": lam})
    return grid


def _merged(base_model, paths, tasks, method: str, params: dict):
    recipe = Recipe(
        merge_method=method,
        base_model=paths["base"],
        models=[ModelRef(model=paths[n]) for n in tasks],
        parameters=params,
    )
    base_model.load_state_dict(dict(iter_merged_tensors(plan(recipe))))
    return base_model


def route_accuracy(model, tok, tasks: dict[str, str], offset: int) -> float:
    """Share of validation prompts whose largest merge weight is their own task's expert."""
    hits = total = 0
    for i, task in enumerate(tasks.values()):
        prompts = [p for p, _ in load_task_items(task_dir(task))[offset:]]
        ids = torch.tensor([tok.encode(p, add_special_tokens=False) for p in prompts])
        hits += int((model.route(ids).argmax(-1) == i).sum())
        total += len(prompts)
    return hits / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--search", type=int, default=50, help="search items per task")
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 16], help="SVD ranks")
    ap.add_argument(
        "--shared",
        nargs="+",
        default=[],
        help="also build Twin-Merging on these grid entries as shared experts (e.g. 'ties d=0.6 λ=0.5')",
    )
    ap.add_argument("--out", type=Path, default=None, help="keep the Twin-Merging folders here")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--real", action="store_true", help="SmolLM2 + LoRA experts instead")
    ap.add_argument("--items", type=int, default=40, help="--real: router prompts per expert")
    ap.add_argument("--skip-sources", action="store_true", help="--real: Twin-Merging rows only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.real:
        from twin_merging_real import run

        rows = run(args.ranks, args.items, args.skip_sources, args.out)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return
    from transformers import AutoTokenizer

    from evomerge.twin.build import build_twin
    from evomerge.twin.config import parse_twin_config

    folder, paths, tasks = _zoo()
    tok = AutoTokenizer.from_pretrained(paths["base"])
    s = args.search
    rows: list[tuple[str, dict[str, float], str]] = []

    def val(model) -> dict[str, float]:
        return _scores(model, tok, None, s)

    for name in ["base", *tasks]:
        rows.append((name, val(_load(paths[name])), ""))
    # the paper's "fine-tuned" bound: each task answered by its own expert
    own = {t: next(sc[t] for n, sc, _ in rows if n == e) for e, t in tasks.items()}
    own["mean"] = sum(own.values()) / len(tasks)
    rows.append(("each expert on its own task (fine-tuned bound)", own, ""))

    plain = _load(paths["base"])
    search_scores = {}
    for label, (method, params) in static_grid().items():
        m = _merged(plain, paths, tasks, method, params)
        search_scores[label] = _scores(m, tok, s, 0)["mean"]
        rows.append((label, val(m), f"search {search_scores[label]:.3f}"))
    best = max(search_scores, key=search_scores.get)  # first of equals: dict order
    rows = [(f"{n} **(best static)**" if n == best else n, v, note) for n, v, note in rows]

    default = "task_arithmetic λ=0.3"
    shareds = {f"{default} (authors' default)": static_grid()[default]}
    if best != default:
        shareds[f"{best} (best static)"] = static_grid()[best]
    # ablation: no shared knowledge (θ* = the base, so v_t is the whole task vector)
    shareds["none (θ* = base)"] = ("task_arithmetic", {"weight": 0.0})
    for label in args.shared:
        if label not in static_grid():
            raise SystemExit(f"--shared {label!r}: not in the grid ({', '.join(static_grid())})")
        shareds[label] = static_grid()[label]
    experts = {n: {"model": paths[n], "prompts": f"zoo:{t}"} for n, t in tasks.items()}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for (shared_label, (method, params)), rank in itertools.product(
            shareds.items(), args.ranks
        ):
            cfg = parse_twin_config(
                {
                    "base_model": paths["base"],
                    "experts": experts,
                    "shared": {"merge_method": method, "parameters": params},
                    "rank": rank,
                    "router": {"items": s},
                },
                "benchmark",
            )
            tag = "-".join(f"{k}{v}" for k, v in params.items())
            out = root / f"twin-{method}-{tag}-r{rank}"
            summary = build_twin(cfg, out, overwrite=True)
            model = _load(str(out))
            sizes[f"Twin-Merging r={rank}"] = summary.bytes
            kept = sum(summary.kept_energy.values()) / len(tasks)
            note = (
                f"route acc {route_accuracy(model, tok, tasks, s):.3f}, "
                f"‖v_t‖² kept {kept:.2f}, {summary.bytes / 1e6:.2f} MB"
            )
            rows.append((f"Twin-Merging r={rank}, shared {shared_label}", val(model), note))
            # ablation: the same parts merged statically, every expert weighted 1/T (no router)
            model.forced_route = torch.full((len(tasks),), 1.0 / len(tasks))
            rows.append((f"  same, uniform weights 1/{len(tasks)} (no router)", val(model), ""))

    one = sum(f.stat().st_size for f in Path(paths["base"]).glob("*.safetensors"))
    task_names = list(tasks.values())
    print(f"lm-skills ({folder.name}); validation items {s}..end of each task; search items 0..{s}")
    print("| model | " + " | ".join(task_names) + " | mean | notes |")
    print("|---" * (len(task_names) + 3) + "|")
    for name, sc, note in rows:
        cells = " | ".join(f"{sc[t]:.3f}" for t in task_names)
        print(f"| {name} | {cells} | {sc['mean']:.3f} | {note} |")
    print(f"\nbytes: one plain model {one / 1e6:.2f} MB, base + 4 experts {5 * one / 1e6:.2f} MB")
    if args.json:
        args.json.write_text(
            json.dumps([{"model": n, **sc, "notes": note} for n, sc, note in rows], indent=2)
        )


if __name__ == "__main__":
    main()
