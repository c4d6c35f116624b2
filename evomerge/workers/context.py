"""ResidentWorker: what one worker keeps in memory for a whole search.

The experts (an ``ExpertCache``), one resident model that each candidate is materialized into
in place (a ``Materializer``), the tokenizer and the fitness. Built from the ExperimentConfig
alone, so a Ray actor can build its own from the config it is shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from evomerge.config import ExperimentConfig
from evomerge.errors import UserInputError
from evomerge.fitness.result import EvalResult
from evomerge.recipe import Recipe
from evomerge.workers.materialize import ExpertCache, Materializer


def load_tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - any loader failure is a user-fixable input problem
        raise UserInputError(
            f"tokenizer: cannot load one from {folder} ({type(err).__name__}: {err}); "
            "put tokenizer files in the base or first model folder"
        ) from None


class ResidentWorker:
    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        resolver: Callable[[str], str],
        worker: str = "local",
        cache: ExpertCache | None = None,
        split: str = "search",
    ) -> None:
        from evomerge.fitness import build_fitness

        self.worker = worker
        self.seed = cfg.seed
        self._space_cfg, self._space = cfg, None
        self.resolver = resolver
        # split="validation": the same worker scores the archive on held-out items
        self.fitness = build_fitness(cfg.fitness, base_dir=Path(cfg.base_dir), split=split)
        ratio = cfg.evaluation.stats_cache
        self.cache = cache or ExpertCache(resolver, stats=ratio > 0, stats_ratio=ratio)
        self.materializer = Materializer(self.cache, device=cfg.evaluation.device)
        if cfg.evaluation.device != "cpu" or cfg.evaluation.dtype not in ("auto", "float32"):
            from evomerge.workers.ray_placement import PlacedMaterializer, placement_from

            # GPU: bf16 resident model, split over gpus_per_worker GPUs when > 1
            self.materializer = PlacedMaterializer(self.cache, placement_from(cfg.evaluation))
        source = cfg.resolved_base() or cfg.resolved_models()[0]
        if cfg.space.kind == "hybrid":  # the data-flow path starts from model A's embeddings
            source = cfg.resolved_models()[0]
        from evomerge.io.adapter_folder import tokenizer_folder

        self.tokenizer = self._own_tokenizer = load_tokenizer(tokenizer_folder(resolver(source)))

    def materialize(self, recipe: Recipe) -> Any:
        model = self.materializer.materialize(recipe)
        self.tokenizer = self._tokenizer_for(recipe)
        return model

    def _tokenizer_for(self, recipe: Recipe) -> Any:
        """A recipe with tokenizer_source is scored with its merged tokenizer (the one its plan
        built: ``plan_vocab`` keeps it), any other with the base's."""
        if recipe.tokenizer_config() is None:
            return self._own_tokenizer
        from evomerge.vocab import plan_vocab

        cache = self.cache
        refs = recipe.source_paths()
        return plan_vocab(recipe, refs, cache.folder, lambda r: cache.model(r).config).tokenizer

    @property
    def space(self) -> Any:
        """The run's pool space, for wants jobs (a gradient is taken with respect to its genes);
        built on first use from the config, as the search builds it."""
        if self._space is None:
            from evomerge.spaces import build_space

            cfg = self._space_cfg
            if cfg.space.kind != "fw_pool":
                raise ValueError(
                    f"a worker computes gradients over an fw_pool space, not {cfg.space.kind!r}"
                )
            base, models = cfg.resolved_base(), cfg.resolved_models()
            self._space = build_space(cfg.space, base=base, models=models, num_layers=0)
        return self._space

    def score(
        self, model: Any, tokenizer: Any, items: dict[str, list[int]] | None = None
    ) -> tuple[EvalResult, float, tuple[float, ...]]:
        result = self.fitness(model, tokenizer, items)
        if items is not None:  # a racing slice: the loop weighs the items (fitness/items.py)
            vals = [v for t in result.tasks.values() for v in t.per_example]
            mean = sum(vals) / len(vals) if vals else float("nan")
            return result, mean, (mean,)
        return result, self.fitness.aggregate(result), self.fitness.objectives(result)

    def close(self) -> None:
        self.materializer.release()
