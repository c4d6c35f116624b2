"""AdaMerging (Yang et al., ICLR 2024) helpers: the entropy objective, its gradient job and an
in-process runner. The driver lives in ``evomerge.drivers.adamerging`` and pairs with the
``fw_pool`` space (``evomerge.fw.space.FWPoolSpace``), whose genes are the merge coefficients.
"""

from __future__ import annotations

from evomerge.adamerging.job import EntropyRequest, entropy_at, run_entropy_job
from evomerge.adamerging.objective import EntropyObjective
from evomerge.adamerging.runner import Step, run_adamerging

__all__ = [
    "EntropyObjective",
    "EntropyRequest",
    "Step",
    "entropy_at",
    "run_adamerging",
    "run_entropy_job",
]
