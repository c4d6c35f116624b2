"""The ``evomerge`` command line: parse, call, print. Bodies live elsewhere (merge.py,
search_cli.py, zoo). A user error prints one line and exits 2 — no traceback."""

# ruff: noqa: B008  (typer declares options as argument defaults)
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from evomerge.errors import UserInputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evolutionary model merging.")
zoo_app = typer.Typer(no_args_is_help=True, help="Tiny local experts (demo, tests, benchmarks).")
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


@app.command()
def merge(
    config: Path = typer.Argument(..., help="evomerge recipe YAML or mergekit YAML"),
    out: Path = typer.Option(..., "--out", help="output HF model folder (written atomically)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="accept pickle .bin checkpoints"
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

    from evomerge.merge import plan, run_merge
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
    return 0


# ---- search commands: bodies in evomerge.search_cli ------------------------------------------
@app.command()
def search(
    experiment: Path = typer.Argument(..., help="experiment YAML"),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="folder holding the run's store"),
    max_evals: int | None = typer.Option(None, "--max-evals"),
    max_seconds: float | None = typer.Option(None, "--max-seconds"),
    seed: int | None = typer.Option(None, "--seed"),
    workers: int | None = typer.Option(None, "--workers"),
    ray_address: str | None = typer.Option(None, "--ray-address"),
) -> None:
    """Run an evolutionary search."""
    from evomerge import search_cli

    _run(
        lambda: search_cli.search(
            experiment,
            run_dir,
            max_evals=max_evals,
            max_seconds=max_seconds,
            seed=seed,
            workers=workers,
            ray_address=ray_address,
        )
    )


@app.command()
def resume(
    run_dir: Path = typer.Argument(...),
    config: Path | None = typer.Option(
        None, "--config", help="changed experiment YAML (non-structural changes only)"
    ),
    max_evals: int | None = typer.Option(None, "--max-evals"),
    max_seconds: float | None = typer.Option(None, "--max-seconds"),
    workers: int | None = typer.Option(None, "--workers"),
    ray_address: str | None = typer.Option(None, "--ray-address"),
) -> None:
    """Continue a stopped search exactly where it stopped."""
    from evomerge import search_cli

    _run(
        lambda: search_cli.resume(
            run_dir,
            config=config,
            max_evals=max_evals,
            max_seconds=max_seconds,
            workers=workers,
            ray_address=ray_address,
        )
    )


@app.command()
def status(run_dir: Path = typer.Argument(...)) -> None:
    """Progress, best so far, failures."""
    from evomerge import search_cli

    _run(lambda: search_cli.status(run_dir))


@app.command()
def export(
    run_dir: Path = typer.Argument(...),
    out: Path = typer.Option(..., "--out"),
    fmt: str = typer.Option("evomerge", "--format", help="evomerge or mergekit"),
    rank: int = typer.Option(1, "--rank"),
) -> None:
    """Write the rank-K recipe of a run as evomerge or mergekit YAML."""
    from evomerge import search_cli

    _run(lambda: search_cli.export(run_dir, out, fmt, rank))


@app.command()
def report(run_dir: Path = typer.Argument(...), out: Path = typer.Option(..., "--out")) -> None:
    """PNG plots and an HTML/markdown summary of a run."""
    from evomerge import search_cli

    _run(lambda: search_cli.report(run_dir, out))


@app.command("eval")
def eval_cmd(
    target: Path = typer.Argument(
        ..., metavar="MODEL|RECIPE|RUN", help="HF model folder, recipe YAML or run folder"
    ),
    experiment: Path = typer.Argument(
        ..., metavar="EXPERIMENT.yaml", help="experiment YAML whose fitness scores it"
    ),
    rank: int = typer.Option(1, "--rank", help="a run's archive member (1 = best)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Score one model with an experiment's fitness: aggregate and per-task scores."""
    from evomerge import eval_cli

    _run(lambda: eval_cli.evaluate(target, experiment, rank=rank, as_json=as_json))


@zoo_app.command("build")
def zoo_build(
    name: str = typer.Argument(...),
    out: Path | None = typer.Option(None, "--out"),
    seed: int = typer.Option(0, "--seed"),
    quick: bool = typer.Option(False, "--quick"),
) -> None:
    """Build a zoo of tiny local experts."""

    def body() -> int:
        from evomerge.zoo.build import build

        typer.echo(str(build(name, out, seed=seed, quick=quick)))
        return 0

    _run(body)


if __name__ == "__main__":
    app()
