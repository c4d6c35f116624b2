"""One writer per run folder: ``<run_dir>/run.lock``, held for the life of a search or resume.

Two writers on one store would both run a generation and then collide on its candidate
indices, and each would evict the other's half-written archive folders. The lock is an fcntl
lock (``evomerge.io.lock``): it dies with its process, so a killed search never leaves the
folder locked. Readers (``status``, ``export``, ``report``) never take it.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.errors import UserInputError
from evomerge.io.lock import FileLock, probe

LOCK_FILE = "run.lock"


def lock_run(run_dir: Path) -> FileLock:
    """Take the run folder's lock (the folder must exist) or refuse at once, naming the
    holder."""
    lock = FileLock(Path(run_dir) / LOCK_FILE)
    try:
        acquired = lock.try_acquire()
    except OSError as err:  # a read-only folder, or a filesystem without locks
        raise UserInputError(
            f"{run_dir}: cannot lock {LOCK_FILE} ({err.strerror}); a search or resume needs a "
            "writable run folder on a filesystem with POSIX locks (docs/cluster.md)"
        ) from None
    if not acquired:
        raise _in_use(run_dir, lock)
    return lock


def refuse_if_locked(run_dir: Path) -> None:
    """Refuse a folder some writer holds, without creating a lock file (a search still starting
    holds the lock before its store exists)."""
    lock = FileLock(Path(run_dir) / LOCK_FILE)
    if probe(lock.path):
        raise _in_use(run_dir, lock)


def _in_use(run_dir: Path, lock: FileLock) -> UserInputError:
    return UserInputError(
        f"{run_dir}: in use by {lock.holder()} (a search or resume holds {LOCK_FILE}); "
        "wait for it to end or stop it, then `evomerge resume` continues the run"
    )
