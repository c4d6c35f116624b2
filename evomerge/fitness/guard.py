"""Contamination guard: well-known public benchmarks are refused as *search* fitness.

Why: a search that maximizes a public benchmark overfits its test items (the evolved recipe is
selected on them), so reporting that benchmark afterwards measures the search, not the model.
mergekit-evolve refuses them for the same reason. Evaluate on them after the search, or opt in
with ``allow_public_benchmarks: true`` when you accept the risk (e.g. a held-out split).
"""

from __future__ import annotations

import fnmatch

# lm-eval task names (and prefixes) of widely reported public benchmarks.
PUBLIC_BENCHMARKS: tuple[str, ...] = (
    "mmlu*",
    "cmmlu*",
    "kmmlu*",
    "global_mmlu*",
    "gsm8k*",
    "gsm_plus*",
    "mgsm*",
    "arc_*",
    "arc",
    "hellaswag*",
    "truthfulqa*",
    "winogrande*",
    "humaneval*",
    "mbpp*",
    "bbh*",
    "gpqa*",
    "hendrycks_math*",
    "minerva_math*",
    "math_*",
    "aime*",
    "ifeval*",
    "piqa*",
    "boolq*",
    "lambada*",
    "openbookqa*",
    "social_iqa*",
    "siqa*",
    "race*",
    "drop*",
    "triviaqa*",
    "nq_open*",
    "squad*",
    "leaderboard_*",
    "agieval*",
    "bigbench*",
    "xnli*",
    "xcopa*",
    "xwinograd*",
    "xstorycloze*",
    "copa*",
    "sciq*",
    "logiqa*",
    "mathqa*",
    "medqa*",
    "pubmedqa*",
    "anli*",
    "glue*",
    "super_glue*",
    "super-glue*",
    "ja_leaderboard*",
    "jsquad*",
    "jcommonsenseqa*",
    "jnli*",
    "marc_ja*",
    "ceval*",
    "musr*",
    "commonsense_qa*",
)


def public_benchmark_match(name: str) -> str | None:
    """The pattern ``name`` matches (case-insensitive), or None."""
    low = name.lower()
    for pat in PUBLIC_BENCHMARKS:
        if fnmatch.fnmatchcase(low, pat):
            return pat
    return None


def refusal_message(name: str, pattern: str, field: str) -> str:
    return (
        f"{field}: {name!r} is a well-known public benchmark (matches {pattern!r}) and is "
        "refused as search fitness: the search would select recipes on its test items, "
        "contaminating any later report of that benchmark. Use a private or held-out task, "
        "evaluate on the benchmark after the search, or set fitness.allow_public_benchmarks: true "
        "to accept the risk."
    )
