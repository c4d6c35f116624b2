"""One HF model folder, read lazily: config, weight index and tokenizer files at open, tensors
one at a time (safetensors; pickle only when the user allows it)."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import UserInputError
from evomerge.io.safetensors_io import TensorInfo, map_tensor, read_header, read_tensor

INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


class ModelFolder:
    """One HF model folder, read lazily: only headers at open, tensors on demand."""

    def __init__(self, path: str | Path, *, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        self.allow_pickle = allow_pickle
        if not self.path.is_dir():
            raise UserInputError(
                f"{self.path}: model folder not found; give a local HF model folder "
                "(config.json + *.safetensors)"
            )
        self._pickled: dict[str, torch.Tensor] | None = None

    @cached_property
    def config(self) -> dict[str, Any]:
        p = self.path / "config.json"
        if not p.is_file():
            raise UserInputError(f"{self.path}: no config.json; is this a HF model folder?")
        try:
            return json.loads(p.read_text())
        except ValueError as err:
            raise UserInputError(f"{p}: not valid JSON ({err})") from None

    @cached_property
    def index(self) -> dict[str, TensorInfo]:
        """Tensor name -> where its bytes are."""
        files = self._safetensors_files()
        if not files:
            return self._pickle_index()
        out: dict[str, TensorInfo] = {}
        for f in files:
            infos, _ = read_header(self.path / f)
            out.update(infos)
        return out

    def _safetensors_files(self) -> list[str]:
        idx = self.path / INDEX
        if idx.is_file():
            try:
                files = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError):
                raise UserInputError(
                    f"{idx}: corrupt index (no weight_map); re-save the model"
                ) from None
            missing = [f for f in files if not (self.path / f).is_file()]
            if missing:
                raise UserInputError(f"{idx}: lists shard {missing[0]} which is not in the folder")
            return files
        return sorted(p.name for p in self.path.glob("*.safetensors"))

    def _pickle_index(self) -> dict[str, TensorInfo]:
        bins = sorted(p.name for p in self.path.glob("*.bin") if p.name.startswith("pytorch_model"))
        if not bins:
            raise UserInputError(f"{self.path}: no weights (*.safetensors) in this folder")
        if not self.allow_pickle:
            raise UserInputError(
                f"{self.path}: only pickle checkpoints ({bins[0]}); pickle can run code when "
                "loaded — convert to safetensors, or pass --allow-pickle if you trust the source"
            )
        tensors: dict[str, torch.Tensor] = {}
        for b in bins:
            tensors.update(torch.load(self.path / b, map_location="cpu", weights_only=True))
        self._pickled = tensors
        return {
            n: TensorInfo(self.path / "<pickle>", t.dtype, tuple(t.shape), 0, 0)
            for n, t in tensors.items()
        }

    def shape(self, name: str) -> tuple[int, ...]:
        return self.index[name].shape

    def read(self, name: str, *, mapped: bool = False) -> torch.Tensor:
        """The tensor as stored; ``mapped``: a private mapping of the file, for a caller that
        uses it once and drops it (a long-lived mapping would tie the file to the process)."""
        info = self.index[name]
        if self._pickled is not None:
            return self._pickled[name]
        return map_tensor(info) if mapped else read_tensor(info)

    def tokenizer_files(self) -> list[Path]:
        return [self.path / f for f in TOKENIZER_FILES if (self.path / f).is_file()]
