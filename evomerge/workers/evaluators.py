"""The evaluator a search gets: serial in this process, or Ray actors (``workers`` > 1, or a
cluster at ``ray_address``), each worker built from the same ``WorkerSpec``."""

from __future__ import annotations

from collections.abc import Callable

from evomerge.errors import UserInputError
from evomerge.workers.base import Evaluator
from evomerge.workers.spec import WorkerSpec


def make_evaluator(
    spec: WorkerSpec, resolver: Callable[[str], str], *, workers: int, ray_address: str | None
) -> Evaluator:
    if workers > 1 or ray_address:
        try:
            from evomerge.workers.ray_evaluator import RayEvaluator
        except ImportError:
            raise UserInputError(
                "workers > 1 / ray_address need the Ray evaluator, which this build does not "
                "have yet; use workers: 1 (the serial evaluator)"
            ) from None
        # ray_address with workers: 1: as many workers as the cluster has room for
        count = None if (ray_address and workers == 1) else workers
        return RayEvaluator.from_spec(spec, resolver, workers=count, address=ray_address)
    from evomerge.workers import threads
    from evomerge.workers.context import ResidentWorker
    from evomerge.workers.serial import SerialEvaluator

    return SerialEvaluator(
        lambda: ResidentWorker(spec, resolver=resolver, worker="serial"),
        timeout_s=spec.timeout_s,
        threads=threads.choose_serial(spec.threads),
    )
