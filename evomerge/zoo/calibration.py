"""Calibration text for activation-informed merging (AIM) on an LM zoo.

AIM's calibration set is task-agnostic text of the kind the base was trained on (the authors
use Pile validation text for Llama-2). For a zoo base that is its own pretraining mixture: items
drawn from ``base_mix`` with its weights, never a test prompt (``train_sampler``), one
``prompt + answer`` a line, as the base read them. ``fitness/calibration/<zoo>.txt`` is this
text for 256 lines, and a test checks the file still equals what this function writes.
"""

from __future__ import annotations

import random

from evomerge.zoo.lm import mixture
from evomerge.zoo.tasks import train_sampler


def calibration_lines(zoo: str, n: int = 256, seed: int = 0) -> list[str]:
    from evomerge.zoo.build import get_spec

    spec = get_spec(zoo)
    draw = mixture([(w, train_sampler(t)) for t, w in spec.base_mix.items()])
    rng = random.Random(f"calibration:{zoo}:{seed}")
    return ["".join(draw(rng)) for _ in range(n)]


if (
    __name__ == "__main__"
):  # python -m evomerge.zoo.calibration lm-skills > fitness/calibration/lm-skills.txt
    import sys

    print("\n".join(calibration_lines(sys.argv[1])))
