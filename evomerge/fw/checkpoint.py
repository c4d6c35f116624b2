"""Lazy, one-tensor-at-a-time reading of a safetensors checkpoint folder, with a byte meter.

Frank-Wolfe merging scans every pool member once per iteration; holding the pool in memory
would make memory grow with the pool. ``LazyCheckpoint`` only reads headers when opened and
copies a single tensor into memory on ``get``; ``Meter`` counts the bytes of pool tensors that
are alive at once, so tests and benchmarks can show the peak does not depend on the pool size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from evomerge.errors import UserInputError


class Meter:
    """Bytes of streamed tensors currently held, and the peak over the meter's life."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0

    def hold(self, t: torch.Tensor) -> torch.Tensor:
        self.current += t.numel() * t.element_size()
        self.peak = max(self.peak, self.current)
        return t

    def drop(self, *ts: torch.Tensor) -> None:
        self.current -= sum(t.numel() * t.element_size() for t in ts)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a HF folder (sharded via its index, or every *.safetensors)."""
    if folder.is_file() and folder.suffix == ".safetensors":
        return [folder]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserInputError(
            f"{folder}: no .safetensors weights; frank_wolfe streams safetensors only "
            "(convert pickle .bin checkpoints first)"
        )
    return files


class LazyCheckpoint:
    """Open handles on a model's safetensors files; ``get`` reads one tensor as float32."""

    def __init__(self, folder: str | Path, meter: Meter | None = None) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        if not self.folder.exists():
            raise UserInputError(f"pool member {self.folder}: folder not found")
        self.meter = meter or Meter()
        self._handles = []
        self._where: dict[str, int] = {}
        for i, f in enumerate(weight_files(self.folder)):
            try:
                h = safe_open(str(f), framework="pt")
            except Exception as err:  # noqa: BLE001 - corrupt file is user-fixable
                raise UserInputError(f"{f}: not a readable safetensors file ({err})") from None
            self._handles.append(h)
            for name in h.keys():
                self._where[name] = i

    def names(self) -> list[str]:
        return sorted(self._where)

    def has(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise UserInputError(
                f"{self.folder}: tensor {name!r} is missing; every pool member must have "
                "the base model's tensors"
            )
        t = self._handles[self._where[name]].get_tensor(name)
        # safetensors may hand out views of one shared mapping: copy, so that an in-place
        # update of theta never changes what the next read of the same tensor returns
        t = t.to(torch.float32, copy=True) if t.is_floating_point() else t.clone()
        return self.meter.hold(t)

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> LazyCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def float_tensor_names(folder: str | Path) -> list[str]:
    """Names of the floating-point tensors of a checkpoint, read from the headers only."""
    from safetensors import safe_open

    out = []
    for f in weight_files(Path(folder)):
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():
                dtype = h.get_slice(name).get_dtype()
                if dtype.startswith("F") or dtype.startswith("BF"):
                    out.append(name)
    return sorted(out)
