"""A model folder read one float32 tensor at a time, with a meter of the bytes held.

The gradient jobs of Frank-Wolfe and AdaMerging (``evomerge.workers.pool_weights``) stream a
pool of checkpoints past the gradient; holding the pool in memory would make memory grow with
the pool. ``LazyCheckpoint`` reads only headers when opened (``io.folder.ModelFolder``, the
engine's own reader: each tensor in its own buffer, no whole-shard mapping) and one tensor on
``get``; ``Meter`` counts the bytes of streamed tensors alive at once, so tests and benchmarks
can show the peak does not depend on the pool size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evomerge.errors import UserInputError
from evomerge.io.folder import ModelFolder


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


class LazyCheckpoint:
    """A pool member's safetensors weights; ``get`` reads one tensor as float32."""

    def __init__(self, folder: str | Path, meter: Meter | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserInputError(f"pool member {self.folder}: folder not found")
        self.meter = meter or Meter()
        self._model = ModelFolder(self.folder)
        self._index = self._model.index  # headers only (a UserInputError when corrupt)

    def names(self) -> list[str]:
        return sorted(self._index)

    def has(self, name: str) -> bool:
        return name in self._index

    def get(self, name: str) -> torch.Tensor:
        if name not in self._index:
            raise UserInputError(
                f"{self.folder}: tensor {name!r} is missing; every pool member must have "
                "the base model's tensors"
            )
        t = self._model.read(name)  # its own buffer: an in-place update of theta is safe
        t = t.to(torch.float32) if t.is_floating_point() else t
        return self.meter.hold(t)

    def close(self) -> None:
        self._index = {}

    def __enter__(self) -> LazyCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def float_tensor_names(folder: str | Path) -> list[str]:
    """Names of the floating-point tensors of a checkpoint, read from the headers only."""
    index = ModelFolder(folder).index
    return sorted(n for n, info in index.items() if info.dtype.is_floating_point)
