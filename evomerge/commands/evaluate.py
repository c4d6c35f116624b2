"""``evomerge eval MODEL|RECIPE|RUN EXPERIMENT.yaml``: score one model with an experiment's
fitness and print the aggregate, each objective and each task (``--json``: one JSON object on
stdout, per-example values included). The fitness is built first, so a bad experiment fails
before any model is loaded or merged. The model is loaded by transformers from its folder (see
``eval_target``) in the dtype a search's workers use (``evaluation.dtype``; ``auto`` is float32
on CPU, bfloat16 on GPU), and the global RNGs are seeded as a search job seeds them, so a python
fitness that draws from them scores the same.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError
from evomerge.eval_target import Target, open_target
from evomerge.results import EvalResult


def evaluate(
    target: Path, experiment: Path, *, rank: int = 1, as_json: bool = False, split: str = "search"
) -> int:
    """``split``: ``search`` (the items a search scores) or ``validation`` (the experiment's
    ``fitness.validation`` items, those a run's winner is chosen on)."""
    from evomerge.config import load_experiment
    from evomerge.fitness import build_fitness
    from evomerge.workers.device_check import check_device
    from evomerge.workers.job import _seeded, job_seed

    cfg = load_experiment(experiment)
    check_device(cfg.evaluation, in_process=True)
    if split not in ("search", "validation"):
        raise UserInputError(f"--split {split}: give search or validation")
    if split == "validation" and cfg.fitness.validation is None:
        raise UserInputError(
            f"--split validation: {experiment} has no fitness.validation; add `validation: "
            "{items: N}` to its fitness (the items after the search's), or drop --split"
        )
    fitness = build_fitness(cfg.fitness, base_dir=Path(cfg.base_dir), split=split)
    roots = [cfg.resolve_path(p) for p in cfg.recipe_paths]
    with open_target(Path(target), rank=rank, recipe_paths=roots) as t:
        model, tokenizer = load_model(t.folder, cfg.evaluation.device, cfg.evaluation.dtype)
        # lm-eval and transformers may print; stdout carries only our report (--json parses it)
        with contextlib.redirect_stdout(sys.stderr), _seeded(job_seed(cfg.seed, t.digest)):
            result = fitness(model, tokenizer)
    agg = fitness.aggregate(result)
    objectives = dict(zip(fitness.objective_names, fitness.objectives(result), strict=True))
    if as_json:
        print(json.dumps(_report(t, experiment, agg, objectives, result, split), indent=1))
    else:
        _print(t, experiment, agg, objectives, result, split)
    return 0 if math.isfinite(agg) else 1


def load_model(folder: Path, device: str = "cpu", dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) from a HF folder: safetensors only, no remote code (a Twin-Merging
    or factored MC-SMoE folder is loaded with evomerge's own copy of its class, not the code
    saved beside it)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from evomerge.moe.factored_folder import is_factored_folder
    from evomerge.twin import is_twin_folder
    from evomerge.workers.context import load_tokenizer

    tokenizer = load_tokenizer(str(folder))  # (a folder without one fails before the weights)
    hf_logging.disable_progress_bar()  # one model, loaded in a second: no bar in the report
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    loader = AutoModelForCausalLM
    if is_twin_folder(folder):
        from evomerge.twin.modeling_twin_merging import TwinMergingForCausalLM as loader
    elif is_factored_folder(folder):
        from evomerge.moe.modeling_mc_smoe import McSmoeFactoredForCausalLM as loader
    try:
        model = loader.from_pretrained(
            folder, dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(
            f"model {folder}: transformers cannot load it ({first}); give a HF model folder "
            "with config.json and safetensors weights"
        ) from None
    return model.to(device).eval(), tokenizer


def _report(
    t: Target, experiment: Path, agg: float, objectives: dict, result: EvalResult, split: str
) -> dict:
    def num(v: float) -> float | None:  # JSON has no NaN
        return float(v) if math.isfinite(v) else None

    return {
        "split": split,
        "validation_fitness": t.validation,
        "target": t.label,
        "kind": t.kind,
        "folder": str(t.folder) if t.kind != "recipe" else None,
        "digest": t.digest,
        "rank": t.rank,
        "search_fitness": t.search_fitness,
        "experiment": str(experiment),
        "fitness": num(agg),
        "objectives": {k: num(v) for k, v in objectives.items()},
        "tasks": {
            n: {
                "score": num(s.score),
                "metric": s.metric,
                "n": len(s.per_example),
                "per_example": list(s.per_example),
            }
            for n, s in result.tasks.items()
        },
    }


def _print(
    t: Target, experiment: Path, agg: float, objectives: dict, result: EvalResult, split: str
) -> None:
    what = {
        "model": "model folder",
        "adapter": "LoRA adapter",
        "recipe": "recipe",
        "run": "run member",
    }[t.kind]
    items = ", validation items" if split == "validation" else ""
    print(f"{what} {t.label} (digest {t.digest[:12]}), fitness of {experiment}{items}")
    line = f"fitness {agg:.4f}"
    recorded = t.validation if split == "validation" else t.search_fitness
    if recorded is not None:
        line += f"  (the search recorded {recorded:.4f}{' on validation' if items else ''})"
    print(line)
    if len(objectives) > 1:
        for name, v in objectives.items():
            print(f"  objective {name:<22} {v:.4f}")
    width = max(len(n) for n in result.tasks)
    for name, s in result.tasks.items():
        n = f"  {len(s.per_example)} items" if s.per_example else ""
        print(f"  {name:<{width}}  {s.score:.4f}  {s.metric}{n}")
