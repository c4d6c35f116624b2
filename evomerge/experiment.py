"""An experiment made ready to build: every model reference resolved to a folder, read once.

The config only validates (``evomerge.config``: the YAML, its preset and its fitness suite, read
by ``load_experiment``). What the models need is done here, once, before any part of a search
is built: ``zoo:`` names are built or found in the zoo cache, ``.gguf`` files converted, paths
made absolute, each model's layer count read from its ``config.json``, and a hybrid space's
winner recipe file read. The builder (``evomerge.build``) hands the result to the space, the
workers' spec and the archive, so nothing resolves a model twice and no worker resolves one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from evomerge.archive import RecipeResolver
from evomerge.config import ExperimentConfig
from evomerge.errors import UserInputError
from evomerge.model_refs import resolve_model
from evomerge.recipe import RECIPE_REF_PREFIX, Recipe
from evomerge.workers.spec import WorkerSpec

SOURCES_DIR = "sources"  # recipes the space refers to that had to be materialized first


@dataclass(frozen=True)
class Experiment:
    cfg: ExperimentConfig
    run_dir: Path
    resolver: RecipeResolver
    """``recipe:<digest>`` -> folder: the run, its sources/ and the config's recipe_paths"""
    models: tuple[str, ...]
    """the experts' folders (or ``recipe:<digest>``), in the config's order"""
    base: str | None
    num_layers: tuple[int, ...]
    """each expert's layer count"""
    winner: Recipe | None = None
    """a hybrid space whose winner is a recipe file: that recipe (written to sources/ first)"""

    def worker_spec(self, split: str = "search") -> WorkerSpec:
        """What each worker of this search builds from (``split``: search or validation)."""
        cfg, ev = self.cfg, self.cfg.evaluation
        tokenizer_model = self.base or self.models[0]
        if cfg.space.kind == "hybrid":  # the data-flow path starts from model A's embeddings
            tokenizer_model = self.models[0]
        shared = ([self.base] if self.base else []) + [m for m in self.models if m != self.base]
        return WorkerSpec(
            fitness=cfg.fitness,
            base_dir=cfg.base_dir,
            seed=cfg.seed,
            tokenizer_model=tokenizer_model,
            shared_models=tuple(shared),
            space=cfg.space,
            base_model=self.base,
            models=self.models,
            split=split,
            device=ev.device,
            dtype=ev.dtype,
            gpus_per_worker=ev.gpus_per_worker,
            cpus_per_worker=ev.cpus_per_worker,
            threads=ev.threads,
            stats_cache=ev.stats_cache,
            timeout_s=ev.timeout_s,
        )


def recipe_resolver(cfg: ExperimentConfig, run_dir: str | Path) -> RecipeResolver:
    """``recipe:<digest>`` -> folder: the run's archive, its sources/, the config's recipe_paths."""
    run_dir = Path(run_dir)
    roots = [run_dir, run_dir / SOURCES_DIR, *(cfg.resolve_path(p) for p in cfg.recipe_paths)]
    return RecipeResolver(roots)


def resolve_models(cfg: ExperimentConfig) -> tuple[tuple[str, ...], str | None]:
    """(the experts' folders, the base model's folder or None): zoo names built or found in
    the zoo cache, .gguf files converted, paths made absolute from the experiment's folder."""
    models = tuple(resolve_model(m, cfg.resolve_path) for m in cfg.models)
    base = resolve_model(cfg.base_model, cfg.resolve_path) if cfg.base_model else None
    return models, base


def resolve_experiment(cfg: ExperimentConfig, run_dir: str | Path) -> Experiment:
    """Resolve every model of ``cfg`` (builds zoos on first use) and read what the space needs
    from disk; raises UserInputError naming a model that is missing or not a decoder LM."""
    run_dir = Path(run_dir)
    models, base = resolve_models(cfg)
    for m in [*models, *([base] if base else [])]:
        if not m.startswith("recipe:") and not Path(m).is_dir() and "+" not in m:
            raise UserInputError(f"model {m}: folder not found; check the experiment's models")
    resolver = recipe_resolver(cfg, run_dir)
    counts = tuple(num_layers_of(resolver(m)) for m in models)
    if base and ("+" in base or Path(base, "adapter_config.json").is_file()):
        num_layers_of(resolver(base))  # a LoRA adapter as base_model: checked against its base
    winner = None
    if cfg.space.kind == "hybrid":
        from evomerge.spaces.hybrid import resolve_winner

        _, winner = resolve_winner(cfg.resolve_path(cfg.space.winner))
    return Experiment(cfg, run_dir, resolver, models, base, counts, winner)


def num_layers_of(folder: str) -> int:
    from evomerge.io.adapter_folder import adapter_for, open_model_folder

    adapter = adapter_for(folder)  # a LoRA adapter has its base's layers
    if adapter is not None:
        _ = open_model_folder(folder).config  # (headers) refuses an adapter its base cannot take
        folder = str(adapter.base)
    cfg_path = Path(folder) / "config.json"
    if not cfg_path.is_file():
        raise UserInputError(f"model {folder}: no config.json; give a Hugging Face model folder")
    data = json.loads(cfg_path.read_text())
    n = data.get("num_hidden_layers") or data.get("text_config", {}).get("num_hidden_layers")
    if not isinstance(n, int):
        raise UserInputError(f"{cfg_path}: no num_hidden_layers; is this a decoder LM folder?")
    return n


def check_space_merges(space, experiment: Experiment) -> None:
    """Plan the space's starting recipe from the models' headers (no tensor is read) so that
    experts the merge cannot combine are refused before any write: a vocabulary of another
    size without ``tokenizer_source``, a missing tensor, another shape. Without it every
    candidate of the search failed on the same line and the budget went on failures."""
    from evomerge.io.folder import DiskSource
    from evomerge.merge.plan import Planner
    from evomerge.merge.weight_rules import has_weight_rules

    recipe = space.decode(space.x0())
    if has_weight_rules(recipe):  # VaRM reads tensor data: the workers check those
        return
    if any(ref.startswith(RECIPE_REF_PREFIX) for ref in recipe.source_paths()):
        return  # a merge of merges: its sources are materialized once the run folder exists
    try:
        Planner(recipe, DiskSource(experiment.resolver)).build()
    except UserInputError as err:  # the planner's advice names a recipe's key: here, the space's
        text = str(err).replace("set tokenizer_source:", "set space.tokenizer_source:")
        raise UserInputError(f"space: {text}") from None
