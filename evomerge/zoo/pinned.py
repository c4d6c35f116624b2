"""Train a zoo in a child process whose CPU kernels are the same on every x86-64 machine.

A zoo trained with the same seed is byte-identical run to run on one machine, but not across
machines: torch picks its vectorized kernels by the CPU's instruction set (ATen's AVX2 / AVX512
builds of softmax, norms, reductions), and so do MKL's GEMMs and oneDNN. Different kernels
round differently, training amplifies the differences, and the zoo's experts and every figure
measured on them change. Checked here by emulating an AVX2 host on an AVX512 one: the
lm-skills quick zoo's weights differ with each of the three choices left free, and are equal
once all three are pinned:

- ``ATEN_CPU_CAPABILITY=default``: ATen's non-vectorized kernels;
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, SSE2 code path;
- ``ONEDNN_MAX_CPU_ISA=SSE41``: oneDNN's baseline kernels.

Each is read once per process, when torch or the library first dispatches, so training runs in
a fresh interpreter with them set. It costs about 1.5-2x the native build time (a one-off: the
zoo is cached). ``EVOMERGE_ZOO_NATIVE=1`` trains in process with the machine's fastest kernels;
the zoo's bytes (and its digest) then depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from evomerge.errors import UserInputError

PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "DNNL_MAX_CPU_ISA": "SSE41",  # oneDNN's name before v2
}
RESULT_FILE = ".models.json"  # the child writes its models dict here


def native_requested() -> bool:
    return os.environ.get("EVOMERGE_ZOO_NATIVE", "") not in ("", "0")


def kernels_label() -> str:
    """Recorded in the manifest: which kernels trained the zoo."""
    return "native (machine-dependent)" if native_requested() else "pinned (portable)"


def train_pinned(name: str, out: Path, *, seed: int, quick: bool, progress: bool) -> dict:
    """Run ``spec.build`` for zoo ``name`` in a child process with the pinned kernels; return
    its models dict. The child's progress bars go to this process's stderr."""
    env = {**os.environ, **PINNED_ENV}
    args = [sys.executable, "-m", "evomerge.zoo.pinned_child", name, str(out), str(seed)]
    args += ["--quick"] if quick else []
    args += [] if progress else ["--no-progress"]
    proc = subprocess.run(args, env=env, stdout=subprocess.DEVNULL)
    result = out / RESULT_FILE
    if proc.returncode != 0 or not result.is_file():
        raise UserInputError(
            f"zoo {name}: training failed in its child process (exit {proc.returncode}; see the "
            "lines above); set EVOMERGE_ZOO_NATIVE=1 to train in this process instead"
        )
    models = json.loads(result.read_text())
    result.unlink()
    return models
