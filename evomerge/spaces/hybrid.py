"""Hybrid space: Akiba et al., "Evolutionary Optimization of Model Merging Recipes" (2024), PS+DFS.

The paper's best model ran data-flow search over the parameter-space winner and one of the
sources. Here model A (embeddings, head, x0 path) is the winner and model B the partner:

* ``winner: recipe:<sha256>``: the winner by digest (the engine resolves merges of merges);
* ``winner: path/to/recipe.yaml``: a recipe file, referenced by its digest (``winner_recipe``
  holds the Recipe, so the caller can register it with the engine/store);
* ``winner: path/to/folder``: the winner already materialized as a HF model folder.

``partner`` is an index into the experiment's models or a model path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evomerge.errors import UserInputError
from evomerge.recipe import RECIPE_REF_PREFIX, Recipe
from evomerge.spaces.config import HybridSpaceConfig
from evomerge.spaces.dataflow import DataflowSpace


def resolve_winner(winner: str) -> tuple[str, Recipe | None]:
    """The model reference for ``winner`` and, for a recipe file, the Recipe itself."""
    if winner.startswith(RECIPE_REF_PREFIX):
        return winner, None
    p = Path(winner)
    if p.is_file():
        recipe = Recipe.load(p)
        return RECIPE_REF_PREFIX + recipe.digest(), recipe
    if p.is_dir():
        return str(p), None
    raise UserInputError(
        f"winner: {winner!r} is neither recipe:<digest>, a recipe YAML file nor a model folder"
    )


def winner_reference(winner: str, recipe: Recipe | None = None) -> tuple[str, Recipe | None]:
    """(model A's reference, its recipe or None) for ``winner``; ``recipe``: the winner recipe
    file, already read by the builder (no disk read then)."""
    if recipe is not None:
        return RECIPE_REF_PREFIX + recipe.digest(), recipe
    return resolve_winner(winner)


def resolve_partner(partner: int | str, models: Sequence[str]) -> str:
    if isinstance(partner, int):
        if not 0 <= partner < len(models):
            raise UserInputError(
                f"partner: index {partner} is out of range for the {len(models)} models {list(models)}"
            )
        return models[partner]
    return partner


class HybridSpace(DataflowSpace):
    def __init__(
        self,
        cfg: HybridSpaceConfig,
        *,
        models: Sequence[str],
        num_layers: int | Sequence[int],
        winner: Recipe | None = None,
    ) -> None:
        # ``winner``: the recipe of a winner recipe file, already read by the builder (a space
        # reads no disk then); without it the file is read here.
        winner_ref, self.winner_recipe = winner_reference(cfg.winner, winner)
        partner = resolve_partner(cfg.partner, models)
        if isinstance(num_layers, int):
            counts: int | list[int] = num_layers
        else:
            # layer counts follow the experiment's models; the winner has the first's depth
            known = dict(zip(models, num_layers, strict=False))
            counts = [num_layers[0], known.get(partner, num_layers[0])]
        super().__init__(cfg, models=[winner_ref, partner], num_layers=counts)
