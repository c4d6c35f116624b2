"""The experts of a Twin-Merging build, read one tensor at a time: a model folder, or a PEFT
LoRA adapter over its base (docs/lora.md), whose change of a targeted matrix is already low rank,
s·B·A, and is handed over as its two factors so that no adapted matrix has to be formed."""

from __future__ import annotations

from pathlib import Path

import torch


class ExpertWeights:
    """One expert: ``read`` gives a tensor as the expert has it (an adapter applied to its base,
    float32); ``factors`` gives an adapter's change of a matrix as (L, R), L @ R = s·B·A
    (float64), or None when the expert is not an adapter, the adapter leaves the tensor alone,
    or its change is not a plain product (DoRA, a tensor the adapter saved whole)."""

    def __init__(self, path: str | Path) -> None:
        from evomerge.io.adapter_folder import open_model_folder

        self.folder = open_model_folder(path)
        self.adapter = getattr(self.folder, "adapter", None)

    @property
    def config(self) -> dict:
        return self.folder.config

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(i.shape) for n, i in self.folder.index.items()}

    def read(self, name: str) -> torch.Tensor:
        return self.folder.read(name).float()

    def changes(self, name: str) -> bool:
        """Whether the adapter changes this tensor at all (always True for a model folder)."""
        return self.adapter is None or name in self.adapter.targets

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        from evomerge.io.safetensors_io import read_tensor

        t = None if self.adapter is None else self.adapter.targets.get(name)
        if t is None or t.a is None or t.b is None:
            return None
        if t.full is not None or t.magnitude is not None or t.bias_of is not None:
            return None
        a, b = read_tensor(t.a).double(), read_tensor(t.b).double()
        s = self.adapter.scaling(t.module)
        if t.embedding or self.adapter.config.get("fan_in_fan_out"):
            return a.T * s, b.T  # the weight is (B A)ᵀ = Aᵀ Bᵀ
        return b * s, a
