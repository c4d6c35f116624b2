"""The zoo's baseline tables: base, experts and simple merges on every task of each LM zoo.

    python benchmarks/zoo_baselines.py [--zoo lm-skills lm-cross] [--limit N] [--lm-eval-limit N]

Builds each zoo (full build, timed; a cached build is reused and its recorded build time shown),
then scores the base, every expert and a coarse grid of simple merges on every task with the
fast evaluator (``evomerge.zoo.evaluate``). One column repeats the zoo's headline task through
lm-eval's ``hf`` model on a folder written by the merge engine, on the first ``--lm-eval-limit``
items. Merges go through the engine (``evomerge.merge.engine``: linear / task_arithmetic / ties), except
layer swapping ("Layer Swapping for Zero-Shot Cross-Lingual Transfer in Large Language Models",
Bandarkar et al. 2024), which is a plain copy of whole layers: the bottom/top layers of the
language expert replace those of the skill expert. These numbers are the bar a search must beat.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from evomerge.merge.engine import iter_merged_tensors, plan
from evomerge.recipe import ModelRef, Recipe
from evomerge.zoo.build import build, load_manifest
from evomerge.zoo.evaluate import evaluate_task, task_dir

Merges = dict[str, dict[str, torch.Tensor]]


def _engine(method: str, base: str | None, models: list[str], params: list[dict]) -> dict:
    recipe = Recipe(
        merge_method=method,
        base_model=base,
        models=[ModelRef(model=m, parameters=p) for m, p in zip(models, params, strict=True)],
    )
    return dict(iter_merged_tensors(plan(recipe)))


def _state(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def layer_swap(main: str, donor: str, layers: int, bottom: int, top: int, ends: bool = False):
    """``main`` with its bottom/top transformer layers (and embeddings/head/final norm when
    ``bottom``/``top`` > 0, or ``ends``) replaced by ``donor``'s, as in the layer-swapping paper."""
    a, d = _state(main), _state(donor)
    swap = set(range(bottom)) | set(range(layers - top, layers))
    out = {}
    for k, v in a.items():
        if ".layers." in k:
            out[k] = d[k] if int(k.split(".layers.")[1].split(".")[0]) in swap else v
        elif "embed_tokens" in k:
            out[k] = d[k] if bottom or ends else v
        else:  # final norm and lm_head sit on top of the last layer
            out[k] = d[k] if top or ends else v
    return out


def simple_merges(folder: Path, manifest: dict) -> Merges:
    models = manifest["models"]
    base = str(folder / "base")
    experts = [str(folder / m["path"]) for m in models.values() if m["role"] == "expert"]
    n = len(experts)
    out: Merges = {
        f"linear uniform (1/{n})": _engine("linear", None, experts, [{"weight": 1.0}] * n)
    }
    for lam in (1 / n, 0.5, 1.0):  # λ=1/n: the experts' mean task vector
        out[f"task_arithmetic λ={lam:.2g}"] = _engine(
            "task_arithmetic", base, experts, [{"weight": lam}] * n
        )
    for lam, dens in itertools.product((0.5, 1.0), (0.3, 0.6)):
        out[f"ties λ={lam} d={dens}"] = _engine(
            "ties", base, experts, [{"weight": lam, "density": dens}] * n
        )
    if manifest["name"] == "lm-cross":
        skill, lang = str(folder / "skill"), str(folder / "language")
        for w in (0.25, 0.5, 0.75):
            out[f"linear skill={w}"] = _engine(
                "linear", None, [skill, lang], [{"weight": w}, {"weight": 1 - w}]
            )
        for ws, wl in itertools.product((0.5, 1.0), (0.5, 1.0)):
            out[f"task_arithmetic {ws}/{wl}"] = _engine(
                "task_arithmetic", base, [skill, lang], [{"weight": ws}, {"weight": wl}]
            )
        layers = json.loads((folder / "skill" / "config.json").read_text())["num_hidden_layers"]
        # b0 t0: no layer, only the embeddings, final norm and head (the outermost "layers")
        out["layer swap skill+lang ends only"] = layer_swap(skill, lang, layers, 0, 0, True)
        for b, t in ((1, 0), (0, 1), (1, 1), (2, 0), (0, 2)):
            out[f"layer swap skill+lang b{b} t{t}"] = layer_swap(skill, lang, layers, b, t)
    return out


def lm_eval_score(model, tok, task: str, limit: int) -> float:
    """The same task through lm-eval-harness (``hf`` model on the resident model)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(task_dir(task).parent), include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=64)
    res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, limit=limit)
    return float(res["results"][task]["exact_match,none"])


def table(folder: Path, limit: int | None, lm_limit: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = load_manifest(folder)
    tasks, head = manifest["tasks"], (manifest["targets"] or manifest["tasks"])[0]
    tok = AutoTokenizer.from_pretrained(str(folder / "base"))
    model = AutoModelForCausalLM.from_pretrained(str(folder / "base")).eval()
    rows: Merges = {name: _state(str(folder / m["path"])) for name, m in manifest["models"].items()}
    rows |= simple_merges(folder, manifest)
    cols = [t.removeprefix("zoo_") for t in tasks]
    lines = [
        f"| model | {' | '.join(cols)} | mean | lm-eval {head.removeprefix('zoo_')} |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for name, state in rows.items():
        model.load_state_dict(state)
        s = [100 * evaluate_task(model, tok, t, limit=limit).score for t in tasks]
        lm = 100 * lm_eval_score(model, tok, head, lm_limit)
        cells = " | ".join(f"{v:.0f}" for v in s)
        lines.append(f"| {name} | {cells} | {sum(s) / len(s):.1f} | {lm:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", nargs="+", default=["lm-skills", "lm-cross"])
    ap.add_argument("--limit", type=int, default=None, help="fast evaluator: first N items")
    ap.add_argument("--lm-eval-limit", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None, help="build here instead of the cache")
    args = ap.parse_args()
    for name in args.zoo:
        out = args.out / name if args.out else None
        t0 = time.perf_counter()
        folder = build(name, out)
        wall = time.perf_counter() - t0
        recorded = load_manifest(folder)["build_seconds"]
        how = f"built in {wall:.0f} s" if wall > 5 else f"cached; recorded build {recorded} s"
        print(f"\n## {name} ({how}; {folder})\n")
        print(table(folder, args.limit, args.lm_eval_limit), flush=True)


if __name__ == "__main__":
    main()
