"""GGUF files as model references: ``models: [path/to/model.gguf]`` or ``base_model: x.gguf``.

A reference ending in ``.gguf`` is converted once (``evomerge.io.gguf.convert``: dequantized to
a bf16 HF folder) into ``${EVOMERGE_CACHE:-~/.cache/evomerge}/gguf/<sha256 of the file>`` and
used from there, so the same file under another name or path is converted once, and an edited
file is converted afresh. Conversions run under one lock for the cache: two processes asking for
the same file convert it once; a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from evomerge.errors import UserInputError
from evomerge.io.digests import file_sha256, folder_digest
from evomerge.io.lock import FileLock

SUFFIX = ".gguf"
MARKER = "gguf.json"  # written last inside the temporary folder: its presence means complete
_KEY_CHARS = 24


def is_gguf_ref(ref: str) -> bool:
    """A path ending in .gguf that is not a folder (a HF folder may be named anything)."""
    if not ref.lower().endswith(SUFFIX) or ref.startswith(("zoo:", "recipe:")):
        return False
    return not Path(ref).expanduser().is_dir()


def resolve_gguf(ref: str) -> str:
    """``ref`` itself, or for a ``.gguf`` path its converted HF folder."""
    return str(gguf_folder(Path(ref))) if is_gguf_ref(ref) else ref


def cache_dir() -> Path:
    from evomerge.io.cache import cache_root

    return cache_root() / "gguf"


def gguf_folder(path: Path) -> Path:
    """The HF folder converted from the GGUF file ``path`` (converted now if not cached)."""
    src = path.expanduser()
    if not src.is_file():
        raise UserInputError(f"{src}: GGUF file not found; give the path of a .gguf file")
    sha = file_sha256(src)
    root = cache_dir()
    target = root / sha[:_KEY_CHARS]
    if (target / MARKER).is_file():
        return target
    from evomerge.io.gguf import describe

    describe(src)  # a file that is not GGUF fails here, before anything is created
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / ".lock"):
        if (target / MARKER).is_file():  # converted by another process while we waited
            return target
        _convert_into(src, sha, target)
    return target


def _convert_into(src: Path, sha: str, target: Path) -> None:
    from evomerge.io.gguf import convert

    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert(src, tmp)
        files, digest = folder_digest(tmp)
        info = {"source": str(src.resolve()), "sha256": sha, "files": files, "digest": digest}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():  # no marker: an incomplete folder from outside evomerge
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
