"""Tied input/output embeddings (Qwen2, Llama-3.2, Gemma, SmolLM2): the LM head is the embedding.

A tied checkpoint stores no ``lm_head.weight``; its config says ``tie_word_embeddings: true``.
The rules here follow mergekit 0.1.5 (its architecture files mark ``lm_head.weight`` as
``optional`` with ``tied_names: [model.embed_tokens.weight]``):

* the output has an ``lm_head.weight`` iff at least one source stores one (``plan_tensor`` skips
  an optional weight that no input holds);
* when it does, a source without a head contributes its embedding matrix in the head's place
  (``LoadTensor`` falls back to the tied names), so a tied + untied merge gets a head merged from
  the untied model's head and the tied model's embedding.

One deliberate difference, in the output config only: mergekit copies the base model's
``tie_word_embeddings`` unchanged, so a tied base merged with an untied expert gives a folder
that says "tied" and still holds a separate head; transformers 4.x then ties the head to the
embedding on load and the merged head is lost. evomerge writes ``tie_word_embeddings: false``
whenever it writes a head, so every transformers version (and the resident model of a search)
uses the merged head; transformers 5 loads mergekit's folder the same way (both tensors present
and different: it does not tie them).
"""

from __future__ import annotations

from typing import Any

HEAD_PREFIX = "lm_head"
TIE_KEY = "tie_word_embeddings"


def is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIX)


def ties_embeddings(config: dict[str, Any]) -> bool:
    """The config's ``tie_word_embeddings``, or its model type's default when it omits the key
    (transformers' defaults differ: False for Llama and Qwen2, True for Gemma and GPT-2)."""
    if TIE_KEY in config:
        return bool(config[TIE_KEY])
    model_type = config.get("model_type")
    if not model_type:
        return False
    from transformers import CONFIG_MAPPING

    try:
        return bool(getattr(CONFIG_MAPPING[model_type](), TIE_KEY, False))
    except (KeyError, ValueError):
        return False


def embedding_for_head(pre_names: list[str]) -> str | None:
    """The embedding a headless (tied) model uses as its head: mergekit's tied name
    ``model.embed_tokens.weight`` (any prefix), else the model's only embedding matrix."""
    tied = [n for n in pre_names if n.endswith("embed_tokens.weight")]
    if tied:
        return tied[0]
    return pre_names[0] if len(pre_names) == 1 else None


def untie_if_head(config: dict[str, Any], writes_head: bool) -> None:
    """Make the output config agree with the tensors: a written head is not tied."""
    if writes_head and ties_embeddings(config):
        config[TIE_KEY] = False
