"""``evomerge moe-reduce IN OUT --method M --keep K --calibration FILE``: a Mixtral-style model
with K experts per layer instead of E, each a merge of a group of the original's (docs/moe.md).
"""

from __future__ import annotations

from pathlib import Path

from evomerge.commands.console import out as stdout
from evomerge.errors import UserInputError


def load_moe(folder: str):
    """The model and tokenizer of ``folder`` (float32, eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(folder) / "config.json").is_file():
        raise UserInputError(f"IN {folder}: no config.json; give a Mixtral model folder or zoo:")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(folder)


def moe_reduce(
    source: str,
    out: Path,
    *,
    method: str,
    keep: int,
    calibration: Path,
    seed: int = 0,
    rank_fraction: float = 1.0,
    overwrite: bool = False,
) -> int:
    from evomerge.merge.calibration import read_lines
    from evomerge.model_refs import resolve_model_ref
    from evomerge.moe.reduce import (
        check_request,
        merge_layers,
        reduced_model,
        reduction_report,
        save_reduced,
    )
    from evomerge.moe.routing_stats import routing_stats

    lines = read_lines(calibration)
    model, tok = load_moe(resolve_model_ref(source))
    check_request(model, method, keep, rank_fraction)
    stats = routing_stats(model, tok, lines)
    layers = merge_layers(model, stats, method, keep, seed=seed, rank_fraction=rank_fraction)
    options = {"seed": seed, "calibration_lines": len(lines), "source": source}
    if method == "sub-moe":
        options["rank_fraction"] = rank_fraction
    report = reduction_report(method, keep, layers, stats, **options)
    save_reduced(reduced_model(model, layers), tok, out, report, overwrite=overwrite)
    before = model.config.num_local_experts
    stdout.print(f"{method}: {before} -> {keep} experts per layer, wrote {out}")
    return 0
