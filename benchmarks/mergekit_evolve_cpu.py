"""Run the real ``mergekit-evolve`` (mergekit 0.1.5) on a machine without a GPU or vLLM.

    python benchmarks/mergekit_evolve_cpu.py --cpus 1 -- GENOME.yaml --storage-path DIR ...

Everything after ``--`` goes to mergekit-evolve's own command (``mergekit.scripts.evolve``),
unchanged. These things stand in the way on a CPU machine, and this launcher changes only them:

* mergekit 0.1.5's evolve modules import ``lm_eval.models.vllm_causallms``, which imports
  vLLM at module level: without vLLM installed mergekit-evolve fails before it parses its
  arguments. ``placeholder_vllm(DIR)`` writes a package named ``vllm`` that only satisfies
  those imports (with version 0.0.0, so lm-eval skips its version-gated imports); put DIR on
  PYTHONPATH so Ray's worker processes see it too. With ``--no-vllm`` nothing in it is called.
  lm-eval 0.4.13 also loads its model modules lazily, and ``mergekit.evo.actors`` names
  ``lm_eval.models.vllm_causallms.VLLM`` in a class annotation without importing that module:
  the module is imported first, here and in every Ray worker (a worker setup hook), or the
  import of mergekit-evolve fails even with vLLM installed.
* Its actor calls ``torch.<device>.empty_cache()`` before each candidate, and ``torch.cpu``
  has none (the CPU has no caching allocator to empty): the same hook gives ``torch.cpu`` a
  no-op ``empty_cache``.
* Its evaluator calls ``lm_eval.simple_evaluate(model="huggingface", ...)`` without a device,
  and lm-eval's ``HFLM`` then defaults to ``device="cuda"`` (it does not fall back when CUDA is
  absent and a device is given, and "cuda" is its default): the hook makes that default "cpu"
  when CUDA is not available. An explicit device is left alone.
* Its evaluators are Ray actors and tasks that ask for one GPU each (``num_gpus=1``): this
  starts the local Ray cluster (on loopback) with ``num_gpus=1`` as a placeholder resource, so
  its one actor is scheduled; torch then runs on the CPU (``--no-merge-cuda``, and lm-eval's
  ``hf`` model falls back to the CPU when CUDA is absent).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Names lm-eval's vLLM backend imports at module level (lm_eval 0.4.13): never called here.
_STUB_MODULES = {
    "vllm/__init__.py": "class LLM: ...\nclass SamplingParams: ...\nclass TokensPrompt: ...\n",
    "vllm/lora/__init__.py": "",
    "vllm/lora/request.py": "class LoRARequest: ...\n",
    "vllm/tokenizers.py": "def get_tokenizer(*args, **kwargs):\n    raise NotImplementedError\n",
    "vllm-0.0.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: vllm\nVersion: 0.0.0\n",
}


def placeholder_vllm(root: Path) -> Path:
    """Write the placeholder ``vllm`` package under ``root`` (a temp dir) and return it."""
    for rel, text in _STUB_MODULES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        note = "" if rel.endswith("METADATA") else "# placeholder: --no-vllm never calls it\n"
        path.write_text(note + text)
    return root


def _worker_setup() -> None:
    """Run in this process and in every Ray worker before mergekit's modules load."""
    import lm_eval.models.vllm_causallms  # noqa: F401  (see the module docstring)
    import torch

    if not hasattr(torch.cpu, "empty_cache"):
        torch.cpu.empty_cache = lambda: None  # nothing is cached on the CPU
    if not torch.cuda.is_available():
        _hflm_defaults_to_cpu()


def _hflm_defaults_to_cpu() -> None:
    import functools

    from lm_eval.models.huggingface import HFLM

    if getattr(HFLM.__init__, "_cpu_default", False):
        return
    init = HFLM.__init__

    @functools.wraps(init)
    def cpu_default(self, *args, device: str | None = "cpu", **kwargs):
        init(self, *args, device=device, **kwargs)

    cpu_default._cpu_default = True
    HFLM.__init__ = cpu_default


def main() -> None:
    if "--" not in sys.argv:
        sys.exit("usage: mergekit_evolve_cpu.py [--cpus N] -- <mergekit-evolve arguments>")
    split = sys.argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=1, help="Ray's CPU resource (one actor uses 1)")
    ap.add_argument("--ray-temp-dir", default=None, help="Ray's session folder (default /tmp/ray)")
    args = ap.parse_args(sys.argv[1:split])
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(
        address="local",
        num_cpus=args.cpus,
        num_gpus=1,  # placeholder: mergekit-evolve's actor asks for one GPU
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="warning",
        _temp_dir=args.ray_temp_dir,
        runtime_env={"worker_process_setup_hook": _worker_setup},
    )
    _worker_setup()
    from mergekit.scripts.evolve import main as evolve_main

    evolve_main(args=sys.argv[split + 1 :], prog_name="mergekit-evolve")


if __name__ == "__main__":
    main()
