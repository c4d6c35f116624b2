"""Write-behind: the output dtype conversion and the file write of tensor i run on a thread
while tensor i + 1 is merged.

torch kernels and file writes release the GIL, so on two cores merging and writing overlap. The
queue is bounded (``depth`` tensors waiting), so memory stays at a couple of output tensors, and
tensors are written in the order they were put, so the bytes are those of a sequential write.
The first error on the thread is raised in the caller at its next ``put`` or at exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType

import torch

_STOP = object()


class WriteBehind:
    """``put(name, tensor)`` hands a tensor to ``write`` on a thread; ``depth=0``: write now."""

    def __init__(self, write: Callable[[str, torch.Tensor], None], depth: int = 1) -> None:
        self._write = write
        self._inline = depth <= 0
        self._q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._run, name="evomerge-write", daemon=True)

    def __enter__(self) -> WriteBehind:
        if not self._inline:
            self._thread.start()
        return self

    def put(self, name: str, tensor: torch.Tensor) -> None:
        if self._inline:
            self._write(name, tensor)
            return
        self._raise()
        self._q.put((name, tensor))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._inline:
            return
        if exc_type is not None:
            self._abort = True  # the caller failed: skip what is still queued
        self._q.put(_STOP)
        self._thread.join()
        if exc_type is None:
            self._raise()

    def _run(self) -> None:
        while (item := self._q.get()) is not _STOP:
            if self._error is not None or self._abort:
                continue  # keep draining so put() never blocks forever
            try:
                self._write(*item)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
