"""Model references to model folders: a path, mergekit's ``BASE+ADAPTER``, a ``.gguf`` file or
``zoo:<zoo>/<model>``.

Resolving one may do real work (a zoo is built on first use, a GGUF file converted once into a
cached folder), so the experiment's models are resolved once, up front, by
``evomerge.experiment.resolve_experiment``, not by the config (which only validates).
"""

from __future__ import annotations

import json
from pathlib import Path

from evomerge.errors import UserInputError

ZOO_PREFIX = "zoo:"


def resolve_model_ref(ref: str) -> str:
    """A model folder for ``ref``: a path is returned as is, a ``.gguf`` file is converted once
    into a cached HF folder (``evomerge.io.gguf_cache``), ``zoo:<zoo>/<model>`` is built (or
    found already built) by ``evomerge.zoo`` and looked up in its ``zoo.json`` manifest."""
    if not ref.startswith(ZOO_PREFIX):
        from evomerge.io.gguf_cache import resolve_gguf

        return resolve_gguf(ref)
    zoo_name, sep, model = ref[len(ZOO_PREFIX) :].partition("/")
    if not sep or not zoo_name or not model:
        raise UserInputError(
            f"model {ref!r}: zoo names look like zoo:<zoo>/<model>, e.g. zoo:lm/base"
        )
    from evomerge.zoo.build import build as build_zoo

    folder = Path(build_zoo(zoo_name))
    manifest = json.loads((folder / "zoo.json").read_text())
    models = manifest.get("models", {})
    entry = models.get(model) if isinstance(models, dict) else None
    if entry is None:
        names = list(models) if isinstance(models, dict) else []
        raise UserInputError(
            f"model {ref!r}: zoo {zoo_name!r} has no model {model!r}; it has {names}"
        )
    rel = entry.get("path", model) if isinstance(entry, dict) else str(entry)
    return str((folder / rel).resolve())


def resolve_model(ref: str, resolve_path) -> str:
    """The folder of an experiment's model ``ref`` (``resolve_path`` makes a path relative to the
    experiment absolute); mergekit's LoRA reference ``BASE+ADAPTER`` resolves each side."""
    if "+" in ref and not ref.startswith("recipe:") and not Path(resolve_path(ref)).exists():
        return "+".join(resolve_model_ref(resolve_path(p)) for p in ref.split("+"))
    return resolve_model_ref(resolve_path(ref))
