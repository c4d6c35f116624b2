"""The output tokenizer and, per model, where each output token's row is in that model.

mergekit 0.1.5's ``mergekit/tokenizer/build.py``, step for step:

* the base tokenizer (``base_model``, else the first model) is stripped of tokens whose id is
  at or past its config's ``vocab_size`` (rows the embedding does not have);
* ``source: base`` keeps it; ``source: <model>`` loads that model's tokenizer as it is;
  ``source: union`` starts from the base's and appends every other model's tokens it lacks:
  first their ordinary vocabulary tokens, then their added tokens (each with its first
  settings), models in recipe order. mergekit walks the models as a Python set and each
  vocabulary as a hash map, so its order among several models' new tokens can change from run
  to run; here it is fixed (recipe order, then token id);
* tokens named in ``tokenizer.tokens`` are added when missing;
* for each model, every output token's id in that model's vocabulary (-1: it has none).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import UserInputError
from evomerge.vocab.config import TokenizerConfig

LOG = logging.getLogger(__name__)


@dataclass
class BuiltVocab:
    tokenizer: Any  # transformers tokenizer of the merged model
    vocab: dict[str, int]  # output token -> output id
    index: dict[str, torch.Tensor]  # model ref -> (len(vocab),) int64 ids in that model, -1 absent
    original: dict[str, dict[str, int]]  # model ref -> its own vocabulary


def load_tokenizer(folder: Path, ref: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), use_fast=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - any loader failure is a user-fixable input problem
        raise UserInputError(
            f"model {ref}: cannot load its tokenizer from {folder} ({type(err).__name__}); "
            "tokenizer_source needs every model's tokenizer files — add them or drop the key"
        ) from None


def build_vocab(
    cfg: TokenizerConfig,
    base: str,
    refs: list[str],
    folder_of: Callable[[str], Path],
    vocab_size_of: Callable[[str], int | None],
) -> BuiltVocab:
    """``base``: the recipe's base_model, else its first model; ``refs``: every model, in
    recipe order."""
    base_tok = _stripped(load_tokenizer(folder_of(base), base), base, vocab_size_of(base))
    toks = {base: base_tok}
    for ref in refs:
        if ref not in toks:
            toks[ref] = load_tokenizer(folder_of(ref), ref)
    if cfg.source == "base":
        out = base_tok
    elif cfg.source == "union":
        out = _union(base_tok, toks, vocab_size_of)
    else:
        out = load_tokenizer(folder_of(cfg.source), cfg.source)  # as is: not stripped
    have = set(out.get_vocab())
    for tok in cfg.token_configs:
        if tok not in have:
            out.add_tokens(tok)
            have.add(tok)
    vocab = out.get_vocab()
    index = {ref: _index(vocab, toks[ref].get_vocab(), vocab_size_of(ref)) for ref in refs}
    original = {ref: t.get_vocab() for ref, t in toks.items()}
    return BuiltVocab(out, vocab, index, original)


def _index(vocab: dict[str, int], model_vocab: dict[str, int], size: int | None) -> torch.Tensor:
    limit = len(model_vocab) if size is None else size
    ids = torch.full((len(vocab),), -1, dtype=torch.int64)
    for tok, new in vocab.items():
        old = model_vocab.get(tok)
        if old is not None and old < limit:  # (mergekit: a row past vocab_size is no row)
            ids[new] = old
    return ids


def _union(base_tok: Any, toks: dict[str, Any], vocab_size_of: Callable[[str], int | None]) -> Any:
    from transformers import AutoTokenizer

    new_vocab: dict[str, None] = {}
    added: dict[str, Any] = {}
    for ref, tok in toks.items():
        size = vocab_size_of(ref) or tok.vocab_size
        decoder = tok.added_tokens_decoder
        added_text = {info.content for info in decoder.values()}
        for text, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i < size and text not in added_text:
                new_vocab.setdefault(text, None)
        for i, info in decoder.items():
            if i < size and info.content not in added:
                added[info.content] = info
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the base's own tokenizer stays as is
        base_tok.save_pretrained(tmp)
        res = AutoTokenizer.from_pretrained(tmp, use_fast=True, trust_remote_code=False)
    base_vocab = base_tok.get_vocab()
    for text in new_vocab:
        if text not in added and text not in base_vocab:
            res.add_tokens(text)
    for info in added.values():
        res.add_tokens(info)
    return res


def _stripped(tok: Any, ref: str, size: int | None) -> Any:
    """``tok`` without the tokens whose id is >= ``size`` (mergekit's get_stripped_tokenizer)."""
    from tokenizers import Tokenizer

    size = size or len(tok.get_vocab())
    unused = {t for t, i in tok.get_vocab().items() if i >= size}
    if not unused:
        return tok
    data = json.loads(tok._tokenizer.to_str())
    if not tok.is_fast or data["model"]["type"] != "BPE":
        raise UserInputError(
            f"model {ref}: its tokenizer has {len(unused)} tokens past vocab_size={size} and is "
            "not a BPE tokenizer, which is all that can be stripped; use tokenizer_source: <model>"
        )
    data["added_tokens"] = [e for e in data["added_tokens"] if e["id"] < size]
    for t in unused:
        data["model"]["vocab"].pop(t, None)

    def keep(m: Any) -> bool:
        parts = m.split(" ") if isinstance(m, str) else m
        return not any(p in unused for p in parts)

    data["model"]["merges"] = [m for m in data["model"]["merges"] if keep(m)]
    tok._tokenizer = Tokenizer.from_str(json.dumps(data))
    return tok
