"""Twin-Merging (Lu et al., NeurIPS 2024, arXiv 2406.15479): a shared static merge plus each
expert's SVD-compressed exclusive knowledge, mixed per input by a small router. ``build.py``
makes the model folder; ``modeling_twin_merging.py`` is the model, saved beside its weights."""

from __future__ import annotations

import json
from pathlib import Path


def is_twin_folder(folder: str | Path) -> bool:
    """True for a folder written by ``evomerge twin-merge`` (its config's model_type)."""
    cfg = Path(folder) / "config.json"
    try:
        return json.loads(cfg.read_text()).get("model_type") == "twin_merging"
    except (OSError, ValueError, AttributeError):
        return False
