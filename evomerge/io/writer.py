"""Atomic HF model folder output: planned safetensors shards (+ index), config, tokenizer.

Everything is written into a temporary folder next to ``out`` and renamed into place at the end,
so an interrupted or failed merge never leaves a half-written model where the user looks.

A killed writer leaves its temporary folder behind (``.<out>.tmp-<id>``, as big as the model).
Each writer holds an fcntl lock on ``.writer.lock`` inside its own temporary folder while it
writes, so the next write into the same place can tell a dead writer's leftovers (lock free)
from a live writer's (lock held, even on another node of a shared filesystem) and removes only
the former.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.errors import UserInputError
from evomerge.io.lock import FileLock, probe
from evomerge.io.pipeline import WriteBehind
from evomerge.io.safetensors_io import ConversionBuffer, PlannedShard, tensor_nbytes

DEFAULT_SHARD_BYTES = 5_000_000_000
WRITER_LOCK = ".writer.lock"
# A leftover without a lock file (an older evomerge's, or a writer killed between its mkdir and
# its lock) counts as dead once it is this old: a live writer creates its lock at once.
UNLOCKED_GRACE_S = 60.0
Entry = tuple[str, tuple[int, ...], torch.dtype]


@dataclass(frozen=True)
class WriteResult:
    out_dir: Path
    n_tensors: int
    n_bytes: int
    shards: int


def shard_layout(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
    """Greedy split in output order; a tensor larger than ``max_bytes`` gets a shard alone."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        nb = tensor_nbytes(e[1], e[2])
        if shards[-1] and size + nb > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += nb
    return shards


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: exists and is not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserInputError(
            f"--out {out}: folder exists and is not empty; remove it or pass --overwrite"
        )


def clean_leftovers(out: Path) -> list[Path]:
    """Remove temporary folders of dead writers into ``out`` (see the module docstring)."""
    removed = []
    for p in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        if p.is_dir() and _is_dead(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _is_dead(tmp: Path) -> bool:
    held = probe(tmp / WRITER_LOCK)
    if held is not None:
        return not held
    try:
        return time.time() - tmp.stat().st_mtime > UNLOCKED_GRACE_S
    except FileNotFoundError:
        return False  # its writer just published or removed it


def _publish(tmp: Path, out: Path) -> None:
    trash = None
    if out.is_dir():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, trash)
    os.replace(tmp, out)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def write_model_folder(
    out: str | Path,
    entries: list[Entry],
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    config: dict,
    files: Iterable[Path] = (),
    texts: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    on_tensor: Callable[[str], None] | None = None,
    write_behind: bool = True,
) -> WriteResult:
    """Write tensors (arriving in any order, each exactly once) as a HF folder, atomically."""
    out = Path(out)
    prepare_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    lock = FileLock(tmp / WRITER_LOCK)
    lock.try_acquire()  # a fresh file in our own folder: always ours
    try:
        meta = {"format": "pt", **(metadata or {})}
        total = _write_shards(tmp, entries, tensors, meta, max_shard_bytes, on_tensor, write_behind)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        for name, text in (texts or {}).items():
            (tmp / name).write_text(text)
        # unlink before unlocking: a cleaner never sees our lock file free
        (tmp / WRITER_LOCK).unlink()
        lock.release()
        _publish(tmp, out)
    except BaseException:
        lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return WriteResult(out, len(entries), total[0], total[1])


def _write_shards(
    tmp, entries, tensors, metadata, max_bytes, on_tensor, write_behind
) -> tuple[int, int]:
    layout = shard_layout(entries, max_bytes)
    n = len(layout)
    names = (
        ["model.safetensors"]
        if n == 1
        else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    convert = ConversionBuffer()  # one scratch for the dtype conversions of every shard
    shards = [PlannedShard(tmp / fn, part, metadata, convert) for fn, part in zip(names, layout)]
    where = {e[0]: s for s, part in zip(shards, layout) for e in part}

    def write(name: str, t: torch.Tensor) -> None:
        where[name].write(name, t)
        if on_tensor is not None:
            on_tensor(name)

    try:
        with WriteBehind(write, depth=1 if write_behind else 0) as behind:
            for name, t in tensors:
                if name not in where:
                    raise ValueError(f"tensor {name} was not planned for output")
                behind.put(name, t)
    finally:
        for s in shards:
            s.close()
    missing = [e[0] for e in entries if e[0] not in where[e[0]].written]
    if missing:
        raise ValueError(f"merge produced no value for {missing[:3]} ({len(missing)} tensors)")
    total = sum(tensor_nbytes(e[1], e[2]) for e in entries)
    if n > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {e[0]: fn for fn, part in zip(names, layout) for e in part},
        }
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total, n
