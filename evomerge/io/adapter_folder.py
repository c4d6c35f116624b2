"""A PEFT LoRA adapter opened as if it were the model folder of its applied weights.

Wherever a model reference is opened (``DiskSource``, the workers' ``ExpertCache``, the Ray
loaders, the search's layer counts and tokenizer) it goes through ``open_model_folder``: a plain
HF folder comes back as a ``ModelFolder``; an adapter folder (``adapter_config.json``) or
mergekit's ``BASE+ADAPTER`` reference comes back as an ``AdapterFolder``, which answers with the
base's config and tensor index and applies the adapter to each tensor as it is read
(``evomerge.io.lora``). Nothing is written to disk.

``BASE+ADAPTER`` has mergekit 0.1.5's meaning (``ModelReference``: the string split on ``+``
into exactly two paths; the base given there wins over the adapter's
``base_model_name_or_path``). A path that exists as a whole is a path, even with a ``+`` in it.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import UserInputError
from evomerge.io.lora import ADAPTER_CONFIG, LoraAdapter
from evomerge.io.model_folder import TOKENIZER_FILES, ModelFolder
from evomerge.io.safetensors_io import TensorInfo


def split_lora_ref(ref: str) -> tuple[str, str] | None:
    """(base, adapter) of a mergekit ``BASE+ADAPTER`` reference, else None."""
    if "+" not in ref or ref.startswith("recipe:") or os.path.exists(ref):
        return None
    parts = ref.split("+")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise UserInputError(
            f"model {ref!r}: a LoRA reference is BASE+ADAPTER (two paths joined by one '+')"
        )
    return parts[0], parts[1]


def adapter_for(path: str | Path) -> LoraAdapter | None:
    """The adapter that ``path`` names (an adapter folder or BASE+ADAPTER), else None."""
    pair = split_lora_ref(str(path))
    if pair is not None:
        base, adapter = pair
        if not Path(adapter).is_dir():
            raise UserInputError(f"model {path}: adapter folder {adapter} not found")
        if not Path(base).is_dir():
            raise UserInputError(
                f"model {path}: base folder {base} not found; give a local HF model folder "
                "before the '+'"
            )
        return LoraAdapter(adapter, base=base)
    if is_adapter_folder(path):
        return LoraAdapter(path)
    return None


def is_adapter_folder(path: str | Path) -> bool:
    """A PEFT adapter folder: ``adapter_config.json`` and no model weights of its own (a folder
    holding both is read as the model it holds, as mergekit does)."""
    p = Path(path)
    if not (p / ADAPTER_CONFIG).is_file():
        return False
    own = [f for f in p.glob("*.safetensors") if not f.name.startswith("adapter_model")]
    return not own and not (p / "model.safetensors.index.json").is_file()


def base_folder(path: str | Path) -> Path:
    """The folder that holds a model's own files (generation config...): a LoRA adapter's base."""
    adapter = adapter_for(path)
    return Path(path) if adapter is None else adapter.base


def open_model_folder(path: str | Path, *, allow_pickle: bool = False) -> Any:
    """A ``ModelFolder``, or an ``AdapterFolder`` when ``path`` names a LoRA adapter."""
    adapter = adapter_for(path)
    if adapter is None:
        return ModelFolder(path, allow_pickle=allow_pickle)
    return AdapterFolder(adapter, ModelFolder(adapter.base, allow_pickle=allow_pickle))


def tokenizer_folder(path: str) -> str:
    """Where a model's tokenizer lives: an adapter's own folder when it saved one (PEFT often
    does), else its base's."""
    adapter = adapter_for(path)
    if adapter is None:
        return path
    if AdapterFolder.own_tokenizer(adapter):
        return str(adapter.folder)
    return str(adapter.base)


class AdapterFolder:
    """The ``ModelFolder`` interface over base + adapter: the base's config and index, tensors
    read from the base and adapted one at a time (float32 for the adapted ones)."""

    def __init__(self, adapter: LoraAdapter, base: ModelFolder) -> None:
        self.adapter = adapter
        self.base = base
        self.path = adapter.folder

    @property
    def config(self) -> dict[str, Any]:
        _ = self.index  # (headers only) an adapter that does not fit its base says so first
        return self.base.config

    @cached_property
    def index(self) -> dict[str, TensorInfo]:
        index = self.base.index
        self.adapter.check_base({n: i.shape for n, i in index.items()})
        return index

    def shape(self, name: str) -> tuple[int, ...]:
        return self.index[name].shape

    def read(self, name: str, *, mapped: bool = False) -> torch.Tensor:
        _ = self.index  # the adapter checked against the base before its first tensor
        return self.adapter.apply(name, self.base.read(name, mapped=mapped))

    def tokenizer_files(self) -> list[Path]:
        own = self.own_tokenizer(self.adapter)
        return own or self.base.tokenizer_files()

    @staticmethod
    def own_tokenizer(adapter: LoraAdapter) -> list[Path]:
        return [adapter.folder / f for f in TOKENIZER_FILES if (adapter.folder / f).is_file()]
