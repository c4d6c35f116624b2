"""The engine's tensor sources over disk: ``DiskSource`` opens model folders (or LoRA adapters on
their base) by reference.

``DiskSource`` is the disk implementation of the engine's ``TensorSource`` protocol (the
workers' ``ExpertCache`` is the in-memory one): tensors are addressed by model reference (a path
or ``recipe:<digest>``, mapped to a folder by a resolver) and tensor name, and come back float32.
``ModelFolder`` (one folder) lives in ``model_folder.py``; it is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from evomerge.errors import UserInputError
from evomerge.io.adapter_folder import open_model_folder
from evomerge.io.model_folder import INDEX, PICKLE_INDEX, TOKENIZER_FILES, ModelFolder

__all__ = [
    "INDEX",
    "PICKLE_INDEX",
    "TOKENIZER_FILES",
    "DiskSource",
    "ModelFolder",
    "Resolver",
    "TensorSource",
]

Resolver = Callable[[str], str]


@runtime_checkable
class TensorSource(Protocol):
    """Where the engine reads source tensors from (disk folders, or a worker's ExpertCache)."""

    def tensor(self, ref: str, name: str) -> torch.Tensor: ...
    def has(self, ref: str, name: str) -> bool: ...
    def names(self, ref: str) -> list[str]: ...
    def folder(self, ref: str) -> Path: ...


class DiskSource:
    """``TensorSource`` over model folders; float32 (or ``dtype``) tensors read one at a time."""

    def __init__(
        self,
        resolver: Resolver | None = None,
        *,
        allow_pickle: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.resolver = resolver or (lambda ref: ref)
        self.allow_pickle = allow_pickle
        self.dtype = dtype
        self._folders: dict[str, Any] = {}

    def model(self, ref: str) -> Any:
        if ref not in self._folders:
            # a LoRA adapter (folder or BASE+ADAPTER) opens as its base with the adapter applied
            self._folders[ref] = open_model_folder(self.folder(ref), allow_pickle=self.allow_pickle)
        return self._folders[ref]

    def folder(self, ref: str) -> Path:
        from evomerge.io.gguf_cache import resolve_gguf

        try:  # a .gguf file reads through its converted folder (merge configs name them too)
            return Path(resolve_gguf(self.resolver(ref)))
        except KeyError:
            raise UserInputError(f"model {ref!r}: unknown reference; no folder for it") from None

    def tensor(self, ref: str, name: str) -> torch.Tensor:
        t = self.model(ref).read(name)
        return t.to(self.dtype) if t.is_floating_point() else t

    def stored(self, ref: str, name: str) -> torch.Tensor:
        """The tensor in its stored dtype, mapped: the engine checks it, converts or merges it,
        and drops it."""
        return self.model(ref).read(name, mapped=True)

    def has(self, ref: str, name: str) -> bool:
        return name in self.model(ref).index

    def names(self, ref: str) -> list[str]:
        return list(self.model(ref).index)

    def shape(self, ref: str, name: str) -> tuple[int, ...]:
        return self.model(ref).shape(name)

    def source_dtype(self, ref: str, name: str) -> torch.dtype:
        return self.model(ref).index[name].dtype
