"""Checks run before any output appears: each failure is one line naming the model, the tensor
and the fix (a ``UserInputError``; the CLI prints it and exits 2).

Header-level problems (corrupt safetensors, truncated shards) are caught when the folders are
opened (``evomerge.io``); architecture, missing tensors, shapes and model counts while planning;
NaN/Inf while each input tensor is read — the merge writes into a temporary folder, so a failure
there leaves nothing in ``--out``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from evomerge.errors import UserInputError

# Config fields that must agree for tensors to be merged position by position.
ARCH_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)  # (vocab_size may differ: evomerge.vocab merges the tokenizers, or names tokenizer_source)


def check_architectures(refs: list[str], config_of: Callable[[str], dict[str, Any]]) -> None:
    if not refs:
        raise UserInputError("recipe names no models; list at least one under 'models' or 'slices'")
    first = config_of(refs[0])
    for ref in refs[1:]:
        cfg = config_of(ref)
        for key in ARCH_FIELDS:
            if key in first and key in cfg and first[key] != cfg[key]:
                raise UserInputError(
                    f"model {ref}: config {key}={cfg[key]} but {refs[0]} has {first[key]}; "
                    "only models of one architecture can be merged — remove one of them"
                )
        archs_a, archs_b = first.get("architectures"), cfg.get("architectures")
        if archs_a and archs_b and archs_a != archs_b:
            raise UserInputError(
                f"model {ref}: architectures {archs_b} but {refs[0]} has {archs_a}; "
                "only models of one architecture can be merged"
            )


def check_model_count(op: Any, n: int, where: str) -> None:
    lo, hi = op.min_models, op.max_models
    if n < lo or (hi is not None and n > hi):
        want = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
        extra = " besides the base_model" if op.needs_base else ""
        raise UserInputError(
            f"{where}: merge_method {op.name!r} takes {want} model(s){extra}, got {n}; "
            "fix the model list"
        )


def shape_of(source: Any, ref: str, name: str) -> tuple[int, ...]:
    fn = getattr(source, "shape", None)
    if fn is not None:
        return tuple(fn(ref, name))
    return tuple(source.tensor(ref, name).shape)


def check_shapes(source: Any, inputs: list[tuple[str, str]], out: str) -> tuple[int, ...]:
    """All inputs of one output tensor have one shape; returns it."""
    shapes = [shape_of(source, ref, name) for ref, name in inputs]
    for (ref, name), shape in zip(inputs[1:], shapes[1:]):
        if shape != shapes[0]:
            raise UserInputError(
                f"model {ref}: tensor {name} has shape {list(shape)} but {inputs[0][0]} has "
                f"{list(shapes[0])} (output {out}); the models must share one architecture"
            )
    return shapes[0]


def is_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in ``t``. One reduction pass and no temporary: min and max propagate NaN and
    reach ±Inf whenever any element is one (``isfinite(t).all()`` instead allocates a bool tensor
    and makes two passes: 10× slower on a 16M-element embedding)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.reshape(-1))
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def check_finite(t: torch.Tensor, ref: str, name: str) -> None:
    """NaN/Inf in ``t`` -> UserInputError naming the model and tensor. Run it on the tensor as
    stored (bf16 is half the bytes of its float32 copy)."""
    if is_finite(t):
        return
    bad = int((~torch.isfinite(t)).sum())
    raise UserInputError(
        f"model {ref}: tensor {name} holds {bad} NaN/Inf values; the checkpoint is "
        "damaged — re-download it or remove this model"
    )
