"""Digests of the fitness code and data that live outside the experiment config.

The config names a python fitness by ``file.py:function`` and an lm-eval task by its folder, so
editing the file or the task's YAML/JSONL changes every score without changing the config. A
run records these digests when it starts; ``evomerge resume`` compares them and refuses to mix
the scores of two different functions unless told ``--allow-changed-fitness``.

Covered: a python task's file, an lm_eval task's ``include_path`` folders, a perplexity task's
text file, and the same for the tasks of ``fitness.constraints``. Zoo evaluators are evomerge's own code; installed lm-eval tasks are not digested.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

_SKIP_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints"}


def _resolve(p: str, base_dir: Path) -> Path:
    """As the fitness builders resolve it: the experiment's folder first, then the cwd."""
    path = Path(p).expanduser()
    if not path.is_absolute() and (base_dir / path).exists():
        path = base_dir / path
    return path.resolve()


def _file_digest(path: Path, h: Any) -> None:
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def path_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and bytes, sorted); 'missing'
    when the path does not exist."""
    h = hashlib.sha256()
    if path.is_file():
        _file_digest(path, h)
    elif path.is_dir():
        for f in sorted(path.rglob("*")):
            rel = f.relative_to(path)
            if not f.is_file() or _SKIP_DIRS & set(rel.parts) or f.suffix == ".pyc":
                continue
            h.update(str(rel).encode() + b"\0")
            _file_digest(f, h)
            h.update(b"\0")
    else:
        return "missing"
    return h.hexdigest()[:16]


def fitness_digests(fitness: Any, base_dir: str | Path) -> dict[str, str]:
    """{'<task label>: <path>': digest} for every file or folder a task's score depends on."""
    from evomerge.fitness.config import task_label

    bd = Path(base_dir)
    out: dict[str, str] = {}
    for t in [*fitness.tasks, *(c.task for c in getattr(fitness, "constraints", []))]:
        if t.kind == "python":
            paths = [t.function.rpartition(":")[0]]
        elif t.kind == "lm_eval":
            paths = list(t.include_path)
        elif t.kind == "perplexity":
            paths = [t.text_file]
        else:
            continue
        for p in paths:
            full = _resolve(p, bd)
            out[f"{task_label(t)}: {full}"] = path_digest(full)
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The entries whose digest differs, or that only one side has."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
