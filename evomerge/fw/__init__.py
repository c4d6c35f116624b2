"""Frank-Wolfe merging helpers: the pool space, the streamed gradient job and the LMO maths.

The driver lives in ``evomerge.drivers.frank_wolfe``; a loop runs, per FW candidate,
``run_lmo_job(space, driver.lmo_inputs(candidate))`` and tells the result as ``alignment``.
"""

from __future__ import annotations

from evomerge.fw.checkpoint import LazyCheckpoint, Meter
from evomerge.fw.job import LmoRequest, build_theta, run_lmo_job
from evomerge.fw.lmo import Alignment
from evomerge.fw.proxy import ProxySpec
from evomerge.fw.space import FWPoolSpace

__all__ = [
    "Alignment",
    "FWPoolSpace",
    "LazyCheckpoint",
    "LmoRequest",
    "Meter",
    "ProxySpec",
    "build_theta",
    "run_lmo_job",
]
