"""Where a worker's resident model lives: CPU, one GPU, or a model split over several GPUs.

A Ray actor started with ``num_gpus=k`` sees k GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``), so
inside the actor they are ``cuda:0 .. cuda:k-1``. With k > 1 the model is split by layers, the
way ``device_map="auto"`` does for inference (mergekit-evolve users ask for it, #514):
embeddings and the first layers on GPU 0, contiguous runs of decoder layers on each GPU, final
norm and LM head on the last; a forward pre-hook on every placed module moves its inputs to its
device, so the unmodified HF forward runs across GPUs (pipeline without overlap: the point is
fitting a model that no single GPU holds, not speed). On GPU the resident model is bfloat16
unless the experiment asks otherwise; merges are still computed in the cache's dtype and cast
on the copy into the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from evomerge.workers.materialize import Materializer, _decoder_layers


@dataclass(frozen=True)
class Placement:
    devices: tuple[str, ...] = ("cpu",)
    dtype: str = "float32"

    @property
    def device(self) -> str:
        return self.devices[0]

    @property
    def split(self) -> bool:
        return len(self.devices) > 1

    def to_dict(self) -> dict[str, Any]:
        return {"devices": list(self.devices), "dtype": self.dtype}


def placement_for(num_gpus: float, dtype: str = "auto") -> Placement:
    """The placement of a worker that Ray gave ``num_gpus`` GPUs (fractions share one GPU)."""
    if num_gpus <= 0:
        return Placement(("cpu",), "float32" if dtype == "auto" else dtype)
    n = max(1, int(num_gpus))
    return Placement(tuple(f"cuda:{i}" for i in range(n)), "bfloat16" if dtype == "auto" else dtype)


def placement_from(evaluation: Any) -> Placement:
    """The placement an in-process (serial) worker gets from ``evaluation`` (device, dtype,
    gpus_per_worker): all of its GPUs when the device is CUDA, else the CPU."""
    device = str(evaluation.device)
    gpus = float(getattr(evaluation, "gpus_per_worker", 0.0) or 0.0)
    dtype = getattr(evaluation, "dtype", "auto")
    if device.startswith("cuda"):  # cuda:N: from GPU N on (placement_for counts from 0)
        first = torch.device(device).index or 0
        devices = tuple(f"cuda:{first + i}" for i in range(max(1, int(max(gpus, 1.0)))))
        return Placement(devices, "bfloat16" if dtype == "auto" else dtype)
    return Placement((device,), "float32" if dtype == "auto" else dtype)


def plan_device_map(
    num_layers: int, devices: tuple[str, ...], tied: bool = False
) -> dict[str, str]:
    """Module name -> device: embeddings first, layers in contiguous near-equal runs, head last;
    a ``tied`` head is the embedding's own matrix, so it stays with the embedding (one tensor
    cannot live on two devices; the last GPU sends the final hidden state back)."""
    k = len(devices)
    plan = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0]}
    for i in range(num_layers):
        plan[f"model.layers.{i}"] = devices[min(k - 1, i * k // max(num_layers, 1))]
    plan["model.norm"] = devices[-1]
    plan["lm_head"] = devices[0] if tied else devices[-1]
    return plan


def _tied_head(model: Any) -> bool:
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and embed is not None and head.weight is embed.weight


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_move(v, device) for v in obj)
    if isinstance(obj, list):
        return [_move(v, device) for v in obj]
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def dispatch(model: Any, device_map: dict[str, str], hooked: set[int] | None = None) -> Any:
    """Move each mapped module to its device and make it pull its inputs there."""
    hooked = set() if hooked is None else hooked
    modules = dict(model.named_modules())
    for name, dev in device_map.items():
        mod = modules.get(name)
        if mod is None:
            continue
        target = torch.device(dev)
        mod.to(target)
        mod._evomerge_device = target
        if id(mod) in hooked:
            continue

        def pre_hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            d = module._evomerge_device
            return _move(args, d), _move(kwargs, d)

        mod.register_forward_pre_hook(pre_hook, with_kwargs=True)
        hooked.add(id(mod))
    return model


class PlacedMaterializer(Materializer):
    """The materializer with the resident model placed per ``Placement`` (dtype, GPU split)."""

    def __init__(self, cache: Any, placement: Placement, *, merge_fn: Any = None) -> None:
        # A split model is built on the CPU and then spread; a single device is built there.
        device = "cpu" if placement.split else placement.device
        super().__init__(cache, device=device, merge_fn=merge_fn)
        self.placement = placement
        self._hooked: set[int] = set()

    def _place(self) -> None:
        self.model.to(getattr(torch, self.placement.dtype))
        if self.placement.split:
            n = len(_decoder_layers(self.model))
            devices = self.placement.devices
            dispatch(self.model, plan_device_map(n, devices, _tied_head(self.model)), self._hooked)
        self._index_targets()

    def device_map(self) -> dict[str, str]:
        if self.model is None or not self.placement.split:
            return {}
        n = len(_decoder_layers(self.model))
        return plan_device_map(n, self.placement.devices, _tied_head(self.model))

    def _build(self, config: Any) -> None:
        super()._build(config)
        self._hooked = set()
        self._place()

    def _resize(self, n: int, config: Any) -> None:
        super()._resize(n, config)
        self._place()
