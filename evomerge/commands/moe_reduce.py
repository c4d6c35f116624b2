"""``evomerge moe-reduce IN OUT --method M --keep K --calibration FILE``: a Mixtral-style model
with K experts per layer instead of E, each a merge of a group of the original's (docs/moe.md).
``--compress rank=R,sparsity=X`` then runs MC-SMoE's compression step on the merged experts
(low rank plus row-sparse, pruned while fine-tuning on ``--finetune``, default the calibration
text; ``evomerge/moe/compress.py``); ``form=factored`` writes OUT as the folder that runs the
factored experts (``evomerge/moe/factored_folder.py``) instead of a plain Mixtral.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.commands.console import out as stdout
from evomerge.errors import UserInputError


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
    compress: str | None = None,
    finetune: Path | None = None,
) -> int:
    from evomerge.merge.calibration import read_lines
    from evomerge.model_refs import resolve_model_ref
    from evomerge.moe.compress import check_rank, parse_compress
    from evomerge.moe.compress_store import FACTORS_FILE, compress_reduced
    from evomerge.moe.reduce import (
        check_request,
        load_moe,
        merge_layers,
        reduced_model,
        reduction_report,
        save_reduced,
    )
    from evomerge.moe.routing_stats import routing_stats

    opts = parse_compress(compress) if compress is not None else None
    if finetune is not None and opts is None:
        raise UserInputError(
            "--finetune: only used with --compress; add --compress rank=R,sparsity=X"
        )
    lines = read_lines(calibration)
    tune_lines = lines if finetune is None else _finetune_lines(finetune)
    model, tok = load_moe(resolve_model_ref(source))
    check_request(model, method, keep, rank_fraction)
    if opts is not None:
        if method != "mc-smoe":
            raise UserInputError(
                f"--compress is MC-SMoE's compression step: use it with --method mc-smoe, not {method}"
            )
        check_rank(opts, model.config.hidden_size, model.config.intermediate_size)
    stats = routing_stats(model, tok, lines)
    layers = merge_layers(model, stats, method, keep, seed=seed, rank_fraction=rank_fraction)
    options = {"seed": seed, "calibration_lines": len(lines), "source": source}
    if method == "sub-moe":
        options["rank_fraction"] = rank_fraction
    report = reduction_report(method, keep, layers, stats, **options)
    small = reduced_model(model, layers)
    extra = {}
    if opts is not None:
        report["compression"], extra[FACTORS_FILE] = compress_reduced(
            small, model, tok, tune_lines, opts
        )
    if opts is not None and opts.form == "factored":
        from safetensors.torch import load

        from evomerge.moe.factored_folder import save_factored

        save_factored(small, tok, load(extra[FACTORS_FILE]), out, report, overwrite=overwrite)
    else:
        save_reduced(small, tok, out, report, overwrite=overwrite, extra_files=extra)
    before = model.config.num_local_experts
    stdout.print(f"{method}: {before} -> {keep} experts per layer, wrote {out}")
    if opts is not None:
        params = report["compression"]["parameters"]
        held = (
            "the form OUT holds: load it with trust_remote_code=True"
            if opts.form == "factored"
            else f"{FACTORS_FILE}; OUT holds the dense products"
        )
        stdout.print(
            f"compressed (rank {opts.rank}, sparsity {opts.sparsity}, {opts.steps} steps): "
            f"{params['factored']:,} parameters factored ({held}), "
            f"{params['dense_folder']:,} in the dense form, {params['original']:,} originally"
        )
    return 0


def _finetune_lines(path: Path) -> list[str]:
    if not Path(path).is_file():
        raise UserInputError(f"--finetune {path}: not found; give a text file, one sample a line")
    lines = [s.strip() for s in Path(path).read_text(encoding="utf-8").splitlines() if s.strip()]
    if not lines:
        raise UserInputError(f"--finetune {path}: the file holds no text; give one sample a line")
    return lines
