"""ResidentWorker: what one worker keeps in memory for a whole search.

The experts (an ``ExpertCache``), one resident model that each candidate is materialized into
in place (a ``Materializer``), the tokenizer and the fitness. Built from a ``WorkerSpec`` alone
(``workers/spec.py``), so a Ray actor builds its own from the small spec it is shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError
from evomerge.recipe import Recipe
from evomerge.results import EvalResult
from evomerge.workers.materialize import ExpertCache, Materializer
from evomerge.workers.spec import WorkerSpec


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
        spec: WorkerSpec,
        *,
        resolver: Callable[[str], str],
        worker: str = "local",
        cache: ExpertCache | None = None,
    ) -> None:
        self.worker = worker
        self.seed = spec.seed
        self._spec, self._space = spec, None
        self.resolver = resolver
        # split="validation": the held-out items (use_split switches a running worker)
        self._fitness_by_split: dict[str, Any] = {}
        self.use_split(spec.split)
        ratio = spec.stats_cache
        self.cache = cache or ExpertCache(resolver, stats=ratio > 0, stats_ratio=ratio)
        self.materializer = Materializer(self.cache, device=spec.device)
        if spec.needs_placement:
            from evomerge.workers.ray_placement import PlacedMaterializer, placement_from

            # GPU: bf16 resident model, split over gpus_per_worker GPUs when > 1
            self.materializer = PlacedMaterializer(self.cache, placement_from(spec))
        from evomerge.io.adapter_folder import tokenizer_folder

        folder = tokenizer_folder(resolver(spec.tokenizer_model))
        self.tokenizer = self._own_tokenizer = load_tokenizer(folder)

    def materialize(self, recipe: Recipe) -> Any:
        # keyed by the digest: a racing slice of the candidate already resident merges nothing
        model = self.materializer.materialize(recipe, key=recipe.digest())
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

    def forget_resident(self) -> None:
        """Something other than a candidate's merge may have written into the resident model:
        the next candidate is merged, even the one merged last."""
        self.materializer.forget()

    @property
    def space(self) -> Any:
        """The run's pool space, for wants jobs (a gradient is taken with respect to its genes);
        built on first use from the config, as the search builds it."""
        if self._space is None:
            from evomerge.spaces import build_space

            spec = self._spec
            if spec.space is None or spec.space.kind != "fw_pool":
                kind = None if spec.space is None else spec.space.kind
                raise ValueError(f"a worker computes gradients over an fw_pool space, not {kind!r}")
            models = list(spec.models)
            self._space = build_space(spec.space, base=spec.base_model, models=models, num_layers=0)
        return self._space

    def use_split(self, split: str) -> None:
        """Score on ``split``'s items from now on: a search's workers score its archive on
        the validation items without loading their models again. Each split's fitness is
        built once."""
        if split not in self._fitness_by_split:
            from evomerge.fitness import build_fitness

            spec = self._spec
            fitness = build_fitness(spec.fitness, base_dir=Path(spec.base_dir), split=split)
            self._fitness_by_split[split] = fitness
        self.fitness = self._fitness_by_split[split]

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
