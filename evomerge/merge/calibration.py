"""The base model's input activations on a calibration text, for activation-informed operators.

AIM (``evomerge.merge.ops.aim``) needs, for every weight it relaxes, the base model's mean absolute
input activation per channel on a task-agnostic calibration set. That is a forward pass of the
base over the calibration blocks — far more than a merge of one tensor costs — so it is done
once per process and per (base model, calibration) and kept: every candidate of a search, and
every tensor of a merge, reads the same statistics.

As the AIM authors' code (``get_calib_dataset`` / ``get_calib_feat``): the first ``samples``
lines (stripped, non-empty, each at most ``block_size`` tokens with the tokenizer's default
special tokens) are concatenated and cut into blocks of ``block_size`` tokens (the remainder is
dropped); a forward hook on every module that has a ``weight`` and no ``embed`` in its name
records, per block, the mean over tokens of |input|, and the blocks' values are summed. The
authors draw their lines from a shuffled Pile validation split; here the file's order is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evomerge.errors import UserInputError

_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}


def read_lines(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserInputError(
            f"calibration.file: {p} not found; give a text file with one calibration sample "
            "per line"
        )
    return [s.strip() for s in p.read_text(encoding="utf-8").splitlines() if s.strip()]


def calibration_blocks(tokenizer: Any, lines: list[str], samples: int, block_size: int) -> list:
    """Token blocks of ``block_size`` from the first ``samples`` usable lines (authors' rule)."""
    ids: list[int] = []
    taken = 0
    for line in lines:
        enc = tokenizer.encode(line)
        if len(enc) > block_size or not enc:
            continue
        ids += enc
        taken += 1
        if taken == samples:
            break
    n = len(ids) // block_size
    if n == 0:
        raise UserInputError(
            f"calibration: {taken} sample(s) hold {len(ids)} tokens, less than one block of "
            f"{block_size}; lower calibration.block_size or add lines to calibration.file"
        )
    flat = torch.tensor(ids[: n * block_size], dtype=torch.long)
    return list(flat.view(n, 1, block_size))


def hooked_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The modules whose weights AIM relaxes: every one with a ``weight``, embeddings excluded."""
    return {
        name: m
        for name, m in model.named_modules()
        if name and getattr(m, "weight", None) is not None and "embed" not in name
    }


@torch.no_grad()
def input_activations(model: torch.nn.Module, blocks: list) -> dict[str, torch.Tensor]:
    """``{module name: Σ_blocks mean_tokens |x|}`` over the modules' input channels."""
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_m: Any, args: tuple, _out: Any) -> None:
            x = args[0]
            v = x.reshape(-1, x.shape[-1]).abs().float().mean(dim=0).cpu()
            sums[name] = sums[name] + v if name in sums else v

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in hooked_modules(model).items()]
    try:
        for block in blocks:
            model(block.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return sums


def base_activations(folder: str | Path, calibration: Any) -> dict[str, torch.Tensor]:
    """``{weight tensor name: activation statistics}`` of the model in ``folder`` on
    ``calibration`` (a ``recipe.Calibration``), computed once per process and kept."""
    folder = Path(folder).resolve()
    text_file = Path(calibration.file)
    if not text_file.is_file():
        read_lines(text_file)  # raises the one-line error naming calibration.file
    # Files are keyed by path, size and mtime, not content: every candidate of a search asks,
    # and re-reading a large calibration text each time would cost more than its merge.
    key = (
        str(folder),
        _stamp(sorted(folder.glob("*.safetensors"))),
        str(text_file.resolve()),
        _stamp([text_file]),
        calibration.samples,
        calibration.block_size,
    )
    hit = _CACHE.get(key)
    if hit is None:
        lines = read_lines(text_file)
        hit = _CACHE[key] = _compute(folder, lines, calibration.samples, calibration.block_size)
    return hit


def _stamp(files: list[Path]) -> tuple:
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def _compute(folder: Path, lines: list[str], samples: int, block_size: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    except (OSError, ValueError) as err:
        raise UserInputError(
            f"calibration: cannot load the base model {folder} as a causal LM with its tokenizer "
            f"({type(err).__name__}); AIM needs a base_model folder transformers can load"
        ) from None
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and block_size > limit:
        raise UserInputError(
            f"calibration.block_size: {block_size} is longer than the base model's "
            f"{limit} positions; set calibration.block_size <= {limit}"
        )
    stats = input_activations(model, calibration_blocks(tok, lines, samples, block_size))
    return {f"{name}.weight": v for name, v in stats.items()}
