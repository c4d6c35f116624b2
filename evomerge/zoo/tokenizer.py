"""A character-level tokenizer for the zoo's language models, built with ``tokenizers``.

One token per character keeps every task's answer boundary exact (no merge rules that could glue
an answer to its prompt) and makes the vocabulary tiny, which matters for a model that has to
train in seconds. It is saved as an ordinary ``PreTrainedTokenizerFast`` folder, so
``AutoTokenizer.from_pretrained`` and lm-eval load it offline. No post-processor is set: encoding
with or without special tokens gives the same ids, so lm-eval and the fast evaluator agree.
"""

from __future__ import annotations

import string
from pathlib import Path

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIALS = (PAD, EOS, UNK)
# Every character any zoo task uses; order is fixed so token ids never change between builds.
CHARS = "\n :=>+-*?" + string.digits + string.ascii_lowercase + string.ascii_uppercase


def build_tokenizer():
    """Return a ``PreTrainedTokenizerFast`` with one id per character of ``CHARS``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + tuple(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Each character is its own "word"; Fuse glues them back together without spaces on decode.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=None
    )
    fast.padding_side = "left"
    return fast


def save_tokenizer(out: Path) -> None:
    build_tokenizer().save_pretrained(str(out))
