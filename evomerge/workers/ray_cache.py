"""Experts shared through Ray's object store: one copy per node, mapped zero-copy by its workers.

A worker's ``ExpertCache`` would hold its own copy of every expert tensor, so N workers on a node
would hold N copies. Here a loader task pinned to each node (hard node affinity) reads the
experts once and *returns* them: Ray stores a task's return value in the object store of the
node it ran on, owned by the caller (the evaluator), so it lives as long as the evaluator keeps
the reference, even if the loader's worker process exits. Every worker on that node then
``ray.get``s it: numpy arrays come back as read-only views of the node's shared memory
(pickle protocol 5 out-of-band buffers), and ``torch.from_numpy`` wraps them without a copy. The
resident memory of a worker therefore does not grow with the size of the experts beyond the
shared pages it touches, and the node's total does not grow with the number of workers.

numpy has no bfloat16, so tensors travel as (dtype name, raw array viewed as an integer type of
the same width) and are viewed back on arrival. Task vectors are *not* cached per worker (that
would be one private copy per worker again): ``SharedExpertCache.task_vector`` computes
``expert - base`` when asked, which gives the same bits as a cached subtraction.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from evomerge.workers.materialize import ExpertCache, Resolver

# torch dtype -> the numpy dtype of the same width used to carry its raw bits
_CARRIERS: dict[torch.dtype, tuple[torch.dtype, Any]] = {
    torch.bfloat16: (torch.int16, np.int16),
}

Packed = dict[str, tuple[str, np.ndarray]]


def pack_tensors(tensors: Mapping[str, torch.Tensor]) -> Packed:
    """name -> (torch dtype name, numpy array sharing the tensor's bytes)."""
    out: Packed = {}
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        dtype_name = str(t.dtype).removeprefix("torch.")
        carrier = _CARRIERS.get(t.dtype)
        arr = t.view(carrier[0]).numpy() if carrier else t.numpy()
        out[name] = (dtype_name, arr)
    return out


def unpack_tensors(packed: Packed) -> dict[str, torch.Tensor]:
    """The inverse of ``pack_tensors`` without copying: the arrays' buffers become the tensors'.

    The arrays from the object store are read-only; torch warns that it cannot protect them, and
    nothing here writes to an expert (the materializer copies merged values into its own model).
    """
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        for name, (dtype_name, arr) in packed.items():
            t = torch.from_numpy(arr)
            want = getattr(torch, dtype_name)
            out[name] = t.view(want) if want in _CARRIERS else t
    return out


LORA_BASE = "__evomerge_lora_base__"  # a packed adapter's entry naming its base folder


def load_packed(ref: str, resolver: Resolver, dtype_name: str) -> Packed:
    """Read one model's tensors the way ``ExpertCache`` does and pack them for the store.

    A LoRA adapter (``evomerge.io.adapter_folder``) ships only the tensors it changes, applied,
    and the name of its base: a worker takes the other tensors from the base (shared as well
    when the base is a source of the search), so the node does not hold a second copy of them.
    """
    cache = ExpertCache(resolver, dtype=getattr(torch, dtype_name))
    tensors = cache.tensors(ref)
    adapter = getattr(cache.model(ref), "adapter", None)
    if adapter is None:
        return pack_tensors(tensors)
    packed = pack_tensors({n: tensors[n] for n in adapter.targets})
    packed[LORA_BASE] = (LORA_BASE, np.frombuffer(str(adapter.base).encode(), dtype=np.uint8))
    return packed


class SharedExpertCache(ExpertCache):
    """An ``ExpertCache`` whose models come from the node's object store where available.

    ``shared`` maps model references to packed tensors (already fetched with ``ray.get``); any
    other reference (e.g. a ``recipe:<digest>`` the search produced later) is read from disk as
    usual, into this worker only.
    """

    def __init__(
        self,
        resolver: Resolver | None,
        shared: Mapping[str, Packed],
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        stats: bool = True,
        stats_ratio: float | None = 1.0,
    ) -> None:
        super().__init__(resolver, dtype=dtype, device=device, stats=stats, stats_ratio=stats_ratio)
        self.shared_refs = frozenset(shared)
        self._shared_nbytes = sum(a.nbytes for p in shared.values() for _, a in p.values())
        adapters = {r: p for r, p in shared.items() if LORA_BASE in p}
        for ref, packed in shared.items():
            if ref not in adapters:
                self._add(ref, unpack_tensors(packed))
                self._remember(ref)
        for ref, packed in adapters.items():  # after the plain models: their base may be one
            self._add_adapter(ref, packed)

    def _add_adapter(self, ref: str, packed: Packed) -> None:
        """An adapter's applied tensors from the store over its base's tensors."""
        rest = dict(packed)
        base = bytes(rest.pop(LORA_BASE)[1]).decode()
        changed = unpack_tensors(rest)
        tensors = dict(self.tensors(base))  # shared when the base is, else read by this worker
        tensors.update(changed)
        self._add(ref, tensors, only=changed)

    def task_vector(self, ref: str, base: str, name: str) -> torch.Tensor:
        # Computed on demand: a cached delta would be a private copy per worker.
        return self.tensor(ref, name) - self.tensor(base, name)

    @property
    def shared_nbytes(self) -> int:
        """Bytes mapped from the store (an adapter's untouched tensors are not: its base's)."""
        return self._shared_nbytes


def node_loader(ray: Any) -> Any:
    """The loader as a Ray task (built lazily: ray is imported only when used)."""

    @ray.remote(num_cpus=0, max_retries=2)
    def _load(ref: str, resolver: Resolver, dtype_name: str) -> Packed:
        return load_packed(ref, resolver, dtype_name)

    return _load


def put_on_nodes(
    ray: Any,
    node_ids: Iterable[str],
    refs: Iterable[str],
    resolver: Resolver,
    dtype_name: str = "float32",
) -> dict[str, dict[str, Any]]:
    """Start one loader per (node, model): node id -> {model ref -> ObjectRef}.

    The loads run in parallel and are not waited for here; a worker blocks on its own node's
    references when it first builds its cache.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    load = node_loader(ray)
    refs = list(refs)
    out: dict[str, dict[str, Any]] = {}
    for node in node_ids:
        pinned = load.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        )
        out[node] = {ref: pinned.remote(ref, resolver, dtype_name) for ref in refs}
    return out
