"""Whether a CPU search's models fit this machine's memory, said before the search starts.

An in-process worker keeps every expert and the base in float32 (an adapter as the base tensors
it changes: ``ExpertCache``), the resident model once more, and, bounded by
``evaluation.stats_cache``, merge inputs that do not change between candidates. A search whose
models alone exceed the memory available here (a 7B search started on a CPU node by mistake) is
killed by the kernel while it loads them, with no message. This counts that floor from the
models' headers (no tensor is read); the real peak is higher (the stats cache, torch, lm-eval),
so the line is only printed when even the floor does not fit. Ray workers run on nodes of their
own and are not counted here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

GIB = 1024**3


def floor_bytes(experiment: Any) -> int:
    """Float32 bytes of every distinct expert and the base (an adapter: the tensors it changes,
    its base counted once) plus one resident model of the largest of them."""
    from evomerge.io.adapter_folder import adapter_for
    from evomerge.io.model_folder import ModelFolder

    refs = [*experiment.models, *([experiment.base] if experiment.base else [])]
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}  # model folder -> its tensors' shapes
    changed = 0  # parameters the adapters replace
    for ref in dict.fromkeys(refs):
        folder = experiment.resolver(ref)
        adapter = adapter_for(folder)
        base = str(adapter.base) if adapter is not None else folder
        if base not in shapes:  # (a header read per model folder)
            shapes[base] = {n: i.shape for n, i in ModelFolder(base).index.items()}
        if adapter is not None:
            own = shapes[base]
            changed += sum(math.prod(own[n]) for n in adapter.targets if n in own)
    full = [sum(math.prod(s) for s in own.values()) for own in shapes.values()]
    return 4 * (sum(full) + changed + max(full, default=0))


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_note(experiment: Any, *, in_process: bool, available: int | None = None) -> str | None:
    """A line when a CPU search in this process cannot hold even its models, else None."""
    if not in_process or str(experiment.cfg.evaluation.device) != "cpu":
        return None
    available = available_bytes() if available is None else available
    if available is None:
        return None
    need = floor_bytes(experiment)
    if need <= available:
        return None
    return (
        f"note: the experts, the base and the resident model take at least {need / GIB:.1f} "
        f"GiB in float32, more than the {available / GIB:.1f} GiB available here: the search "
        "will likely be killed for memory; run it on a larger node or a GPU "
        "(evaluation.device: cuda), or with fewer experts"
    )
