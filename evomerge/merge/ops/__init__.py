"""Merge operators: pure tensor functions registered by name.

Contract (``OpSpec.fn``)::

    fn(tensors, base, *, generator, **params) -> Tensor

``tensors`` are the non-base models' tensors (float32, same shape and device); ``base`` is the
base model's tensor, or None for operators that do not use one (then ``tensors`` holds every
model). Per-model parameters arrive as lists aligned with ``tensors``; global parameters as
scalars (λ under the key ``"lambda"``). Operators are pure: no I/O, inputs never modified, and
stochastic ones draw only from ``generator`` — a CPU generator from ``generator_for(seed,
tensor_name)``, so the same recipe gives the same bits whatever the tensor order, thread count
or device. Parameters and arithmetic follow mergekit 0.1.5 wherever mergekit has the method.

Each operator file is the plain reference computation. Whatever only makes the same bits faster
(the C kernel, the fused task-arithmetic path, DARE's packed draws and L1 tables, a search
worker's cached per-expert parts, bf16 inputs read as stored, writing into a given buffer) lives
in the private package ``evomerge.merge.ops._fast``, which the engine asks once per tensor
(``_fast.plan``); tests prove its results equal to the operators'.
"""

from __future__ import annotations

# Importing the operator modules registers them.
from evomerge.merge.ops import (  # noqa: E402,F401  (import for registration side effects)
    aim,
    consensus,
    linear,
    model_stock,
    multislerp,
    nuslerp,
    passthrough,
    pcb,
    slerp,
    task_arithmetic,
    tsv,
)
from evomerge.merge.ops._registry import OPS, OpSpec, generator_for, get_op, list_ops, register_op

__all__ = ["OPS", "OpSpec", "generator_for", "get_op", "list_ops", "register_op"]
