"""The global RNGs a search checkpoints: python's, numpy's and torch's.

Library drivers may draw from them (pycma samples from numpy's global RNG), so each generation's
checkpoint stores their state and resume restores it; a fresh run seeds them from the
experiment seed before the driver exists.
"""

from __future__ import annotations

import pickle
import random

import numpy as np


def capture_rng() -> bytes:
    import torch

    return pickle.dumps(
        {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
    )


def restore_rng(blob: bytes) -> None:
    import torch

    state = pickle.loads(blob)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_globals(seed: int) -> None:
    """Fresh runs start every global RNG from the experiment seed (before the driver exists)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
