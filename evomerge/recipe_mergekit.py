"""mergekit YAML import and export.

An evomerge recipe is mergekit-shaped, so import is mostly validation: mergekit features with no
evomerge meaning (``modules``, per-slice ``base_model``, ``residual_weight``,
``chat_template``) are refused with a line naming the key. LoRA references ``model+lora`` keep
mergekit's meaning (``evomerge.io.adapter_folder``). Export refuses what mergekit cannot express (operators it lacks,
``recipe:<digest>`` sources, a data-flow path whose ends are not on the base model) and notes
in a comment what it expresses differently (random masks: mergekit draws them from its global
RNG, so dare/della merges are not bit-identical).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evomerge.errors import UserInputError
from evomerge.io.yaml_read import read_yaml
from evomerge.recipe import RECIPE_REF_PREFIX, Recipe, WeightRule

UNSUPPORTED_TOP = {
    "modules": "per-module configs are not supported; use 'models' or 'slices'",
    "chat_template": "chat_template is not supported; edit tokenizer_config.json after merging",
}


def from_mergekit_dict(data: Any, *, origin: str = "config") -> Recipe:
    if not isinstance(data, dict):
        raise UserInputError(f"{origin}: expected a mapping at the top level")
    data = dict(data)
    for key, why in UNSUPPORTED_TOP.items():
        if data.get(key) is not None:
            raise UserInputError(f"{origin}: '{key}': {why}")
        data.pop(key, None)
    if data.get("dtype") is None:
        data.pop("dtype", None)
    for i, sl in enumerate(data.get("slices") or []):
        for key in ("base_model", "residual_weight"):
            if isinstance(sl, dict) and sl.get(key) is not None:
                raise UserInputError(
                    f"{origin}: slices[{i}].{key} is not supported; set it at the top level"
                )
            if isinstance(sl, dict):
                sl.pop(key, None)
    _normalize_params(data)
    return Recipe.from_dict(data, origin=origin)


def _normalize_params(node: Any) -> None:
    """mergekit allows one bare ``{filter, value}`` mapping where we take a list of rules."""
    if isinstance(node, dict):
        params = node.get("parameters")
        if isinstance(params, dict):
            for k, v in params.items():
                if isinstance(v, dict):
                    params[k] = [v]
                if params[k] is None:
                    raise UserInputError(f"parameter {k!r} has no value")
        for v in node.values():
            _normalize_params(v)
    elif isinstance(node, list):
        for v in node:
            _normalize_params(v)


def from_mergekit_yaml(text: str, *, origin: str = "config") -> Recipe:
    return from_mergekit_dict(read_yaml(text, origin), origin=origin)


def load_config(path: str | Path) -> Recipe:
    """An evomerge recipe or a mergekit config (the same shape; mergekit extras validated)."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{p}: config file not found")
    return from_mergekit_yaml(p.read_text(), origin=str(p))


def to_mergekit_dict(recipe: Recipe) -> dict[str, Any]:
    from evomerge.merge.plan import op_for

    spec = op_for(recipe)
    if spec.mergekit_name is None:
        raise UserInputError(
            f"merge_method {recipe.merge_method!r} has no mergekit equivalent; "
            "export with --format evomerge"
        )
    for ref in recipe.source_paths():
        if ref.startswith(RECIPE_REF_PREFIX):
            raise UserInputError(
                f"source {ref}: mergekit cannot reference another recipe; merge it first "
                "(evomerge merge) and use its folder path"
            )
    if recipe.slices and spec.max_models == 1 and recipe.base_model:
        ends = {recipe.slices[0].sources[0].model, recipe.slices[-1].sources[0].model}
        if ends != {recipe.base_model}:
            raise UserInputError(
                "this layer path starts or ends on a model other than base_model: mergekit would take "
                "the embeddings/LM head from the first/last slice's model instead of "
                f"{recipe.base_model}; export with --format evomerge"
            )
    if _has_weight_rule(recipe):
        raise UserInputError(
            "weight rules ({rule: varm|mwa}) exist only in evomerge; resolve them to numbers "
            "first (evomerge.merge.weight_rules.resolve_weight_rules) or export with --format evomerge"
        )
    d = recipe.to_dict()
    d["merge_method"] = spec.mergekit_name
    d.pop("seed", None)
    _lora_refs_for_mergekit(d)
    return d


def _lora_refs_for_mergekit(d: dict[str, Any]) -> None:
    """An adapter folder source becomes mergekit's BASE+ADAPTER (mergekit would read the
    folder as a model and find no weights)."""
    from evomerge.io.adapter_folder import adapter_for, is_adapter_folder

    def fix(ref: str) -> str:
        if "+" in ref or not is_adapter_folder(ref):
            return ref
        return f"{adapter_for(ref).base}+{ref}"  # type: ignore[union-attr]

    if d.get("base_model"):
        d["base_model"] = fix(d["base_model"])
    for m in d.get("models") or []:
        m["model"] = fix(m["model"])
    for sl in d.get("slices") or []:
        for src in sl.get("sources") or []:
            src["model"] = fix(src["model"])


def _has_weight_rule(recipe: Recipe) -> bool:
    scopes = [recipe.parameters, *(m.parameters for m in recipe.models or [])]
    for sl in recipe.slices or []:
        scopes += [sl.parameters, *(s.parameters for s in sl.sources)]
    return any(isinstance(v, WeightRule) for scope in scopes if scope for v in scope.values())


def to_mergekit_yaml(recipe: Recipe) -> str:
    from evomerge.merge.plan import op_for

    text = yaml.safe_dump(to_mergekit_dict(recipe), sort_keys=False)
    if op_for(recipe).stochastic:
        text = (
            f"# evomerge seed {recipe.seed}: mergekit draws random masks from its global RNG "
            "(--random-seed), so this merge is not bit-identical to evomerge's\n" + text
        )
    return text
