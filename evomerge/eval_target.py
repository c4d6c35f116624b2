"""What ``evomerge eval`` scores: a model folder, a recipe YAML or a run's archived model, each
resolved to a HF model folder on disk.

A recipe (evomerge or mergekit YAML) is merged by the engine into a temporary folder that lives
as long as the ``open_target`` context. Scoring a folder loaded by transformers, rather than a
resident model of the search's materializer, makes ``evomerge eval`` the number a user gets
from the merged model itself (``evomerge merge`` then lm-eval's ``hf`` model).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import UserInputError
from evomerge.recipe import ModelRef, Recipe

ARGUMENT = "MODEL|RECIPE|RUN"


@dataclass(frozen=True)
class Target:
    kind: str  # "model", "adapter", "recipe" or "run"
    label: str  # what the user named, for the printout
    folder: Path  # the HF model folder to score
    digest: str  # recipe digest (a model folder: its passthrough recipe's)
    search_fitness: float | None = None  # a run's member: the fitness its search recorded
    rank: int | None = None
    validation: float | None = None  # a run's member: its recorded validation score, if any


def kind_of(path: Path) -> str:
    """'model' (a folder with config.json), 'adapter' (a LoRA adapter folder), 'run' (a folder
    with a run store) or 'recipe'."""
    from evomerge.store import STORE_FILE

    if path.is_dir():
        if (path / STORE_FILE).is_file():
            return "run"
        if (path / "config.json").is_file():
            return "model"
        if (path / "adapter_config.json").is_file():
            return "adapter"  # a PEFT LoRA folder: applied to its base (docs/lora.md)
        raise UserInputError(
            f"{ARGUMENT} {path}: a folder with neither config.json (a model) nor {STORE_FILE} "
            "(a run folder); give a HF model folder, a recipe YAML or a run folder"
        )
    if path.is_file():
        if path.suffix.lower() in (".yaml", ".yml"):
            return "recipe"
        raise UserInputError(
            f"{ARGUMENT} {path}: not a folder or a .yaml recipe; give a HF model folder, a "
            "recipe YAML (evomerge or mergekit) or a run folder"
        )
    raise UserInputError(f"{ARGUMENT} {path}: not found; check the path")


@contextlib.contextmanager
def open_target(path: Path, *, rank: int = 1, recipe_paths: Sequence[str] = ()) -> Iterator[Target]:
    """The model folder behind ``path`` (a recipe's merge is deleted when the context ends).
    ``recipe_paths``: where ``recipe:<digest>`` sources of a recipe are looked up."""
    if str(path).startswith("zoo:"):  # zoo:<zoo>/<model>, built on first use like a search's
        from evomerge.model_refs import resolve_model_ref

        path = Path(resolve_model_ref(str(path)))
    path = Path(path)
    kind = kind_of(path)
    if rank != 1 and kind != "run":
        raise UserInputError(f"--rank {rank}: only a run folder has ranks; drop --rank")
    if kind == "model":
        folder = path.resolve()
        digest = Recipe(merge_method="passthrough", models=[ModelRef(model=str(folder))]).digest()
        yield Target("model", str(path), folder, digest)
    elif kind == "adapter":
        recipe = Recipe(merge_method="passthrough", models=[ModelRef(model=str(path.resolve()))])
        with _merged(recipe, _resolver(recipe_paths)) as folder:
            yield Target("adapter", str(path), folder, recipe.digest())
    elif kind == "run":
        with _run_member(path, rank) as target:
            yield target
    else:
        from evomerge.recipe_mergekit import load_config

        recipe = load_config(path)
        with _merged(recipe, _resolver(recipe_paths)) as folder:
            yield Target("recipe", str(path), folder, recipe.digest())


def _resolver(roots: Sequence[str]) -> Callable[[str], str]:
    """Source references of a recipe: paths as they are, ``zoo:`` names built or found in the
    zoo cache, ``recipe:<digest>`` looked up in ``roots`` (run or archive folders)."""
    from evomerge.archive import RecipeResolver
    from evomerge.model_refs import resolve_model_ref

    recipes = RecipeResolver(roots)
    return lambda ref: recipes(resolve_model_ref(ref))


@contextlib.contextmanager
def _merged(recipe: Recipe, resolver: Callable[[str], str]) -> Iterator[Path]:
    from evomerge.workers.materialize import write_model

    with tempfile.TemporaryDirectory(prefix="evomerge-eval-") as tmp:
        out = Path(tmp) / "model"
        write_model(recipe, out, resolver)
        yield out


@contextlib.contextmanager
def _run_member(run_dir: Path, rank: int) -> Iterator[Target]:
    """The rank-``rank`` archive member of a run, in winner order (``export``'s: by validation
    score once the run has them): its archived folder, or (when the folder is gone) its recipe
    merged again with the run's own sources."""
    from evomerge.archive import ARCHIVE_DIR
    from evomerge.config import experiment_from_json
    from evomerge.store import RunStore
    from evomerge.validation import ranking

    with RunStore.open(run_dir, readonly=True) as st:
        members = ranking(st).members
        if not 1 <= rank <= len(members):
            raise UserInputError(
                f"--rank {rank}: the archive of {run_dir} holds {len(members)} models (1 = best)"
            )
        m = members[rank - 1]
        trial = st.trial(m.idx)
        run_cfg = experiment_from_json(st.config_json(), origin=f"{run_dir} store config")
    label = f"{run_dir} rank {rank}"
    full = m.validated and not m.stopped and math.isfinite(m.validation)  # a full score only
    held_out = m.validation if full else None
    folder = run_dir / ARCHIVE_DIR / trial.digest
    if (folder / "config.json").is_file():
        yield Target("run", label, folder.resolve(), trial.digest, trial.fitness, rank, held_out)
        return
    from evomerge.experiment import recipe_resolver

    recipe = Recipe.from_yaml(trial.recipe_yaml, origin=f"{run_dir} candidate {trial.idx}")
    with _merged(recipe, recipe_resolver(run_cfg, run_dir)) as merged:
        yield Target("run", label, merged, trial.digest, trial.fitness, rank, held_out)
