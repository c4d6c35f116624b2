"""evomerge: evolutionary search for model-merge recipes.

Heavy dependencies (ray, lm_eval, optuna, cma) are imported lazily inside the modules that
need them, so ``import evomerge`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from evomerge.errors import EvomergeError, UserInputError

__all__ = ["EvomergeError", "UserInputError", "__version__"]
