"""sha256 digests of files and of whole model folders (what a build records and prints)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20
# (resolved path, size, mtime_ns) -> sha256: a GGUF input is hashed once per process, not on
# every lookup of the same reference
_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _MEMO:
        h = hashlib.sha256()
        with p.open("rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
        _MEMO[key] = h.hexdigest()
    return _MEMO[key]


def folder_digest(folder: str | Path, *, skip: tuple[str, ...] = ()) -> tuple[dict[str, str], str]:
    """({relative path: sha256} of every file under ``folder``, one sha256 over that list)."""
    root = Path(folder)
    files = {
        p.relative_to(root).as_posix(): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }
    listing = "".join(f"{h}  {name}\n" for name, h in sorted(files.items()))
    return files, hashlib.sha256(listing.encode()).hexdigest()
