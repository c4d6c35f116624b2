"""Deterministic CPU training settings for the zoo's builders (a module of its own so that zoo
builders can use it without importing zoo/build.py, which imports their specs)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def deterministic_cpu(threads: int = 2) -> Iterator[None]:
    """Pin threads and deterministic kernels while training; restore the caller's settings."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(min(threads, old_threads))
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
