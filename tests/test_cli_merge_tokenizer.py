"""`evomerge merge` from models without a tokenizer writes a model without one, and says so on
stderr in one line (the merge itself succeeds); with a tokenizer it says nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evomerge.config import resolve_model_ref

MODELS = ("base", "cipher", "shift")


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """The lm-skills base and two experts, weights and config only (no tokenizer files)."""
    root = tmp_path_factory.mktemp("bare")
    for m in MODELS:
        src = Path(resolve_model_ref(f"zoo:lm-skills/{m}"))
        (root / m).mkdir()
        for f in ("config.json", "model.safetensors"):
            shutil.copy(src / f, root / m / f)
    return root


def _merge(cfg: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "evomerge", "merge", str(cfg), "--out", str(out), "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _recipe(tmp: Path, root: Path | None) -> Path:
    ref = (lambda m: root / m) if root else (lambda m: resolve_model_ref(f"zoo:lm-skills/{m}"))
    cfg = tmp / "ta.yaml"
    cfg.write_text(
        f"merge_method: task_arithmetic\nbase_model: {ref('base')}\nmodels:\n"
        f"  - {{model: {ref('cipher')}, parameters: {{weight: 0.5}}}}\n"
        f"  - {{model: {ref('shift')}, parameters: {{weight: 0.5}}}}\n"
    )
    return cfg


def test_merge_without_tokenizer_says_so(bare, tmp_path):
    out = tmp_path / "merged"
    p = _merge(_recipe(tmp_path, bare), out)
    assert p.returncode == 0, p.stderr
    notes = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(notes) == 1 and "no tokenizer" in notes[0] and "tokenizer_source" in notes[0]
    assert (out / "model.safetensors").is_file() and not (out / "tokenizer.json").exists()


def test_merge_with_tokenizer_is_quiet(tmp_path):
    out = tmp_path / "merged"
    p = _merge(_recipe(tmp_path, None), out)
    assert p.returncode == 0 and "tokenizer" not in p.stderr, p.stderr
    assert (out / "tokenizer.json").is_file()
