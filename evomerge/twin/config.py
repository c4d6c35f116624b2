"""The ``evomerge twin-merge`` YAML: experts, the shared merge, the SVD rank and the router.

```yaml
base_model: zoo:lm-skills/base
experts:                       # router order; each with the prompts its router class learns
  cipher: {model: zoo:lm-skills/cipher, prompts: zoo:zoo_cipher}
  shift: {model: zoo:lm-skills/shift, prompts: prompts/shift.txt}   # one prompt a line
shared: {merge_method: task_arithmetic, parameters: {weight: 0.3}}
rank: 8
router: {items: 50, epochs: 50, lr: 0.0005, seed: 0}
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evomerge.errors import UserInputError
from evomerge.io.yaml_read import read_yaml

SHARED_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "linear")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExpertEntry(_Strict):
    model: str
    """The expert: a model folder, a zoo: reference, or a PEFT LoRA adapter folder (or
    ``BASE+ADAPTER``) over base_model: then its exclusive part comes from the adapter's factors
    (docs/twin_merging.md)."""
    prompts: str
    """Its router examples: ``zoo:<task>`` (the first ``router.items`` prompts of that zoo
    task's test items), a ``.txt`` file (one prompt a line) or a ``.jsonl`` file (a ``prompt``
    field a line)."""


class SharedMerge(_Strict):
    merge_method: str = "task_arithmetic"
    """The static merge that makes the shared expert θ* (the paper: task arithmetic or TIES)."""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"weight": 0.3})
    """The operator's parameters, as mergekit's top-level ``parameters``: defaults for every
    expert and the operator's global ones, e.g. TIES's ``lambda`` (the authors' config: task
    arithmetic, weight 0.3)."""


class RouterConfig(_Strict):
    items: int = Field(50, ge=1)
    """Prompts per expert taken from a ``zoo:`` prompt source (the first ``items``)."""
    epochs: int = Field(50, ge=1)
    """Passes over the router examples (the authors' code: 50)."""
    lr: float = Field(5e-4, gt=0)
    """AdamW learning rate, decayed linearly to 0 (the authors' code: 5e-4)."""
    batch_size: int = Field(256, ge=2)
    """Examples per step (the authors' code: 256)."""
    seed: int = 0
    """Seeds the router's initialisation, shuffling and dropout: same seed, same router."""


class TwinConfig(_Strict):
    base_model: str
    """The model the experts were fine-tuned from (task vectors are taken against it)."""
    experts: dict[str, ExpertEntry]
    """Two or more experts by name, in router order."""
    shared: SharedMerge = SharedMerge()
    rank: int = Field(8, ge=1)
    """SVD rank r of each expert's exclusive part, per matrix (capped at its smaller side)."""
    router: RouterConfig = RouterConfig()


def parse_twin_config(data: Any, origin: str) -> TwinConfig:
    from evomerge.recipe import format_validation_error

    if not isinstance(data, dict):
        raise UserInputError(f"{origin}: expected a mapping with base_model, experts, ...")
    try:
        cfg = TwinConfig.model_validate(data)
    except ValidationError as err:
        raise UserInputError(format_validation_error(err, origin, TwinConfig)) from None
    if len(cfg.experts) < 2:
        raise UserInputError(f"{origin}: field 'experts': give two or more experts to merge")
    if cfg.shared.merge_method not in SHARED_METHODS:
        raise UserInputError(
            f"{origin}: field 'shared.merge_method': {cfg.shared.merge_method!r} is not one of "
            f"{', '.join(SHARED_METHODS)}"
        )
    return cfg


def load_twin_config(path: str | Path) -> TwinConfig:
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{p}: Twin-Merging config not found")
    return parse_twin_config(read_yaml(p.read_text(), str(p)), str(p))


def load_prompts(source: str, items: int, base_dir: Path, field: str) -> list[str]:
    """The router examples of one expert (see ``ExpertEntry.prompts``)."""
    if source.startswith("zoo:"):
        from evomerge.zoo.evaluate import load_task_items, task_dir

        return [p for p, _ in load_task_items(task_dir(source[4:]))[:items]]
    path = Path(source) if Path(source).is_absolute() else base_dir / source
    if not path.is_file():
        raise UserInputError(f"{field}: {path} not found; give zoo:<task>, a .txt or a .jsonl")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        try:
            prompts = [json.loads(ln)["prompt"] for ln in lines]
        except (ValueError, KeyError, TypeError):
            raise UserInputError(
                f"{field}: {path}: every line must be a JSON object with a 'prompt' string"
            ) from None
    else:
        prompts = lines
    if not prompts:
        raise UserInputError(f"{field}: {path} holds no prompts; give one or more")
    return prompts
