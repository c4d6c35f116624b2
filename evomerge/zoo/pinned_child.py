"""The child process that ``zoo/pinned.py`` starts with the pinned kernels' environment: trains
one zoo and writes its models dict to ``OUT/.models.json``.

``python -m evomerge.zoo.pinned_child NAME OUT SEED [--quick] [--no-progress]``. A module of its
own so that pinned.py (which ``zoo/build.py`` calls) does not import build.py back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from evomerge.zoo.build import get_spec, zoo_inputs
from evomerge.zoo.cpu import deterministic_cpu
from evomerge.zoo.pinned import RESULT_FILE


def main(argv: list[str]) -> int:
    name, out, seed = argv[0], Path(argv[1]), int(argv[2])
    quick, progress = "--quick" in argv, "--no-progress" not in argv
    spec = get_spec(name, quick)
    with deterministic_cpu(getattr(spec, "threads", 2)):
        models = spec.build(out, seed=seed, progress=progress, **zoo_inputs(spec))
    (out / RESULT_FILE).write_text(json.dumps(models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
