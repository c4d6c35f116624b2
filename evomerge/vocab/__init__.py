"""Merging models whose tokenizers differ (added tokens, other vocabulary sizes).

mergekit 0.1.5's semantics: a recipe with ``tokenizer_source: base | union | <model>`` (or a
``tokenizer:`` block with ``source``, ``tokens``, ``pad_to_multiple_of``) gets an output
tokenizer (``build``), and every tensor indexed by token (embeddings, LM head) is rebuilt per
model in that tokenizer's order before the operator runs (``align``). The output config's
``vocab_size`` is the output tokenizer's length, padded. Without the key, models whose
vocabulary sizes differ are refused with a line naming it.

The planner calls ``plan_vocab`` once and ``vocab_shape`` per output tensor; the engine calls
``task.vocab.align`` on a vocabulary task's loaded inputs (disk merge and in-place search alike).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError
from evomerge.vocab.align import Vocab
from evomerge.vocab.build import build_vocab, load_tokenizer
from evomerge.vocab.config import TokenizerConfig

__all__ = ["TokenizerConfig", "Vocab", "load_tokenizer", "plan_vocab", "vocab_shape"]

_MEMO: dict[str, Vocab] = {}  # a search plans every candidate: build the tokenizer once


def vocab_size(config: dict[str, Any]) -> int | None:
    n = config.get("vocab_size")
    if n is None and isinstance(config.get("text_config"), dict):
        n = config["text_config"].get("vocab_size")
    return int(n) if n is not None else None


def plan_vocab(
    recipe: Any,
    refs: list[str],
    folder_of: Callable[[str], Path],
    config_of: Callable[[str], dict[str, Any]],
) -> Vocab | None:
    """The recipe's merged vocabulary, or None when it sets no tokenizer (``refs``: every model
    of the recipe, base first)."""
    cfg = recipe.tokenizer_config()
    if cfg is None:
        return None
    base = recipe.base_model or refs[0]
    named = [] if cfg.source in ("base", "union") else [cfg.source]
    folders = [folder_of(r) for r in dict.fromkeys([*refs, *named])]
    key = json.dumps(
        [cfg.model_dump(mode="json"), recipe.base_model, refs, [_stamp(f) for f in folders]]
    )
    hit = _MEMO.get(key)
    if hit is None:
        built = build_vocab(cfg, base, refs, folder_of, lambda r: vocab_size(config_of(r)))
        n = len(built.vocab)
        pad = cfg.pad_to_multiple_of
        size = -(-n // pad) * pad if pad else n
        if len(_MEMO) >= 8:
            _MEMO.clear()
        digest = hashlib.sha256(key.encode()).hexdigest()
        hit = _MEMO[key] = Vocab(built, cfg, recipe.base_model, size, key=digest)
    return hit


def _stamp(folder: Path) -> list[Any]:
    """The folder and its tokenizer/config files' mtimes (a rewritten folder is rebuilt)."""
    names = ("config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    return [str(folder), *(_mtime(folder / n) for n in names)]


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def vocab_shape(
    shapes: list[tuple[str, str, tuple[int, ...]]],
    out: str,
    config_of: Callable[[str], dict[str, Any]],
    vocab: Vocab | None,
) -> tuple[int, ...] | None:
    """The output shape of a tensor indexed by token (2-D, one row per token of each model's
    ``vocab_size``) merged into ``vocab``; None for any other tensor, or when there is no
    ``vocab`` and every model has as many rows (the tensors then merge as they are)."""
    if not all(len(s) == 2 and s[0] == vocab_size(config_of(ref)) for ref, _, s in shapes):
        return None
    ref0, name0, s0 = shapes[0]
    for ref, name, s in shapes[1:]:
        if s[1:] != s0[1:]:
            raise UserInputError(
                f"model {ref}: tensor {name} has shape {list(s)} but {ref0} has {list(s0)} "
                f"(output {out}); the models must share one architecture"
            )
        if vocab is None and s[0] != s0[0]:
            raise UserInputError(
                f"model {ref}: {name} has {s[0]} token rows but {ref0} has {s0[0]} (output "
                f"{out}): their tokenizers differ; set tokenizer_source: base, union or one "
                "model's path"
            )
    return None if vocab is None else (vocab.size, *s0[1:])
