"""Trained zoo models kept by what trained them, so two zoos that share a model train it once.

lm-backdoor is lm-skills with one expert trained differently: its base and three experts are
lm-skills' bit for bit, and without this cache building both zoos trains them twice (in the
test suite, minutes). A model's key is a digest of everything that shapes its bytes: its
training recipe (the shape, the tokenizer, the mixture, the phase, the seeds; for an expert, its
base's key and the parameters it trains), plus the build format, the kernels and the library
versions (``evomerge.zoo.provenance``). A code change that changes the bytes of a recipe must
bump ``FORMAT_VERSION``, as for the zoo folders themselves.

Entries live under ``${EVOMERGE_CACHE}/zoo-models/<key>`` and are hard-linked into a zoo folder
where the filesystem allows (copied otherwise). ``EVOMERGE_ZOO_REUSE=0`` trains every model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from evomerge.io.cache import cache_root
from evomerge.zoo.provenance import provenance


def enabled() -> bool:
    return os.environ.get("EVOMERGE_ZOO_REUSE", "1") != "0"


def model_key(recipe: dict) -> str:
    """sha256 over the recipe (dataclasses as dicts) and the provenance."""
    payload = {"recipe": _plain(recipe), "provenance": provenance()}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def fetch(key: str, out: Path) -> bool:
    """Put the cached model ``key`` at ``out``; False when there is none (or reuse is off)."""
    src = cache_root() / "zoo-models" / key
    if not enabled() or not src.is_dir():
        return False
    shutil.copytree(src, out, copy_function=_link_or_copy)
    return True


def store(key: str, folder: Path) -> None:
    """Keep the model saved at ``folder`` under ``key`` (atomically; a concurrent builder that
    stored it first wins, with the same bytes)."""
    if not enabled():
        return
    root = cache_root() / "zoo-models"
    target = root / key
    if target.is_dir():
        return
    tmp = root / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp, copy_function=_link_or_copy)
    try:
        os.replace(tmp, target)
    except OSError:  # another builder stored it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _plain(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
