"""An exclusive lock on a file, held across processes (and Ray workers on one node).

Cached builds (zoo folders, GGUF conversions) take it around check-build-publish, so when two
processes want the same folder one builds it and the other waits, then finds it built. The lock
is advisory (``fcntl.flock``) and released by the kernel when its holder dies, so a killed build
never blocks the next one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing; left behind, it is tiny)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock, the atomic rename still holds
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
