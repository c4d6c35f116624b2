"""Shared fixtures of the search tests: a tiny Llama family, a python fitness, an experiment."""

from __future__ import annotations

import textwrap
from pathlib import Path

# Log-likelihood of a fixed token sequence: cheap, deterministic, and it depends smoothly on
# every merged weight, so the search has something to climb.
SCORE_PY = """\
import torch

IDS = torch.arange(1, 17).remainder(60).unsqueeze(0)


def score(model, tokenizer):
    with torch.no_grad():
        logits = model(input_ids=IDS).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, IDS[:, 1:, None])
    return float(logp.mean())
"""


def make_family(root: Path, n_experts: int = 2, layers: int = 4, hidden: int = 32) -> dict:
    """A base and experts (base + small random deltas) as HF folders, with a tokenizer."""
    from tests.helpers.tiny_models import make_tiny_llama_family

    base, experts = make_tiny_llama_family(
        root, n_experts=n_experts, layers=layers, hidden=hidden, noise=0.05
    )
    return {"base": base, "experts": list(experts)}


def write_experiment(
    tmp: Path,
    family: dict,
    *,
    max_evals: int,
    popsize: int,
    seed: int = 0,
    name: str = "exp.yaml",
    driver: str = "cma_es",
    options: str | None = None,
    ta_baseline: bool = False,
) -> Path:
    """``ta_baseline``: also score the task-arithmetic baseline (4 more evaluations before the
    search; off by default, so tests that count the fitness's calls need not)."""
    (tmp / "score.py").write_text(SCORE_PY)
    experts = "\n".join(f"  - {e}" for e in family["experts"])
    text = textwrap.dedent(f"""\
        name: tiny
        models:
        {{experts}}
        base_model: {family["base"]}
        space:
          kind: parameter
          merge_method: task_arithmetic
          layer_groups: 2
          params: [weight]
        fitness: {{python: score.py:score}}
        driver: {{name: {driver}, options: {options or f"{{popsize: {popsize}}}"}}}
        budget: {{max_evals: {max_evals}}}
        seed: {seed}
        archive: {{top_k: 2}}
        evaluation: {{timeout_s: 60}}
        """).replace("{experts}", experts)
    if not ta_baseline:
        text += "baselines: {task_arithmetic: []}\n"
    p = tmp / name
    p.write_text(text)
    return p
