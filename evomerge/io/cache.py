"""Where evomerge caches what it builds once (zoos, converted GGUF folders, task folders):
``${EVOMERGE_CACHE:-~/.cache/evomerge}``. Here in io/, below both zoo/ and io's readers, so
neither has to import the other to find it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("EVOMERGE_CACHE", Path.home() / ".cache" / "evomerge")).expanduser()
