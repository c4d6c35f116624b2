"""``evaluation.device`` checked against this machine before anything is written.

Without the check, ``device: cuda`` on a machine whose torch has no CUDA failed every expert's
baseline with torch's "Torch not compiled with CUDA enabled", and the search stopped blaming the
fitness; ``cuda:3`` on a two-GPU node failed the same way. The other way round, a search on a
GPU node left at the default ``device: cpu`` ran on the CPU with the GPU idle and nothing said.

Only an in-process (serial) evaluator is checked against this machine: Ray workers may run on
other nodes, whose GPUs Ray hands out (``evaluation.gpus_per_worker``).
"""

from __future__ import annotations

from typing import Any

from evomerge.errors import UserInputError


def check_device(evaluation: Any, *, in_process: bool) -> None:
    """Refuse a device torch cannot parse, and, in process, a CUDA device this machine lacks."""
    import torch

    name = str(evaluation.device)
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserInputError(
            f"evaluation.device: {name!r} is not a torch device; use cpu, cuda or cuda:N"
        ) from None
    if not in_process or device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise UserInputError(
            f"evaluation.device: {name!r}, but torch {torch.__version__} sees no CUDA GPU here "
            "(a CPU build of torch, or CUDA_VISIBLE_DEVICES hides them); install the CUDA "
            "build of torch (README, Install) or set evaluation.device: cpu"
        )
    count = torch.cuda.device_count()
    gpus = max(1, int(evaluation.gpus_per_worker or 1))
    last = (device.index or 0) + gpus - 1
    if last >= count:
        many = f" with gpus_per_worker {gpus}" if gpus > 1 else ""
        raise UserInputError(
            f"evaluation.device: {name!r}{many} needs cuda:{last}, but this machine has "
            f"{count} CUDA GPU(s) (cuda:0 to cuda:{count - 1}); pick one of those"
        )


def idle_gpu_note(evaluation: Any, *, in_process: bool) -> str | None:
    """A line for a search about to run on the CPU of a machine with a CUDA GPU, else None."""
    if not in_process or str(evaluation.device) != "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return (
        f"note: {torch.cuda.device_count()} CUDA GPU(s) visible, but evaluation.device is cpu: "
        "set evaluation.device: cuda to merge and score there"
    )
