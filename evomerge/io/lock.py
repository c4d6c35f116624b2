"""Advisory file locks that die with their process: POSIX record locks (``fcntl.lockf``).

The kernel (or the file server) drops the lock when the holding process exits, however it
exits (SIGKILL, OOM kill, a pre-empted node once its lease expires), so a stale lock file never
blocks anyone: the file may stay, the lock does not. The holder writes ``PID host`` into the
file so that a refused process can say who holds it.

POSIX locks are coherent across the nodes of a cluster on NFSv4 (and NFSv3 with the NLM lock
daemon), Lustre mounted with ``-o flock`` (not ``localflock``), IBM Spectrum Scale (GPFS),
BeeGFS with global file locks enabled (``tuneUseGlobalFileLocks``) and CephFS; see
docs/cluster.md. They are per process, not per file descriptor: closing *any* descriptor of the
file drops the process's lock, and a second lock taken by the same process always succeeds.
``_HELD`` therefore refuses a second lock on the same path inside one process, and ``probe``
never opens a file this process holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()
_BUSY = (errno.EACCES, errno.EAGAIN)


def _key(path: Path) -> str:
    return str(path.parent.resolve() / path.name)


class FileLock:
    """An exclusive lock on ``path`` (created if missing), held until ``release`` or exit."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock now, or return False if another process (or this one) holds it."""
        if self._fd is not None:
            return True
        key = _key(self.path)
        with _HELD_GUARD:
            if key in _HELD:
                return False
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in _BUSY:
                    return False
                raise
            _HELD.add(key)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return True

    def acquire(self, *, poll_s: float = 0.5, on_wait: Callable[[str], None] | None = None) -> None:
        """Wait until the lock is ours; ``on_wait(holder)`` is called once if we must wait."""
        told = False
        while not self.try_acquire():
            if on_wait is not None and not told:
                on_wait(self.holder())
                told = True
            time.sleep(poll_s)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with _HELD_GUARD:
            _HELD.discard(_key(self.path))
            os.close(fd)  # closing the descriptor drops the lock

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it: 'PID 123 on host node7'."""
        try:
            pid, host = self.path.read_text().split()[:2]
        except (OSError, ValueError):
            return "another process"
        return f"PID {pid} on host {host}"

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def probe(path: str | Path) -> bool | None:
    """Whether some live process holds the lock on ``path`` (None: there is no such file).
    Never takes the lock for longer than the test itself."""
    path = Path(path)
    if _key(path) in _HELD:
        return True
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in _BUSY:
            return True
        raise
    finally:
        os.close(fd)
    return False
