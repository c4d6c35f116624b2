"""``evomerge pleas --model-a A --model-b B [--size S] [--data D] [--method M] OUT``: merge two
models trained from different inits with PLeaS (docs/pleas.md) into a new model folder.

Digits zoo MLPs (``evomerge.model_merges.digits``) and Llama models
(``evomerge.model_merges.llama``) are accepted; which one is read off ``config.json``. Every
flag is checked before any model is loaded or any zoo built, and OUT is written to a temporary
sibling and moved into place: a refusal or a failure writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from evomerge.commands.console import out as stdout
from evomerge.errors import UserInputError
from evomerge.model_merges.pleas import METHODS

DIGITS_DATA_HELP = "'train' (the digits training images) or 'proxy:<transform>', e.g. proxy:rot90"


def pleas(
    model_a: str,
    model_b: str,
    out: Path,
    *,
    size: float = 1.0,
    data: str | None = None,
    method: str = "pleas",
    items: int = 400,
) -> int:
    _check_flags(out, size, method, items)
    folder_a, folder_b = _folder(model_a, "--model-a"), _folder(model_b, "--model-b")
    kind_a, kind_b = _kind(folder_a, "--model-a"), _kind(folder_b, "--model-b")
    if kind_a != kind_b:
        raise UserInputError(
            f"--model-b: {model_b} is a {kind_b} model and --model-a a {kind_a} one; PLeaS merges "
            "two models of one architecture"
        )
    data = _check_data(kind_a, data, method)
    write = _digits if kind_a == "digits" else _llama
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        summary = write(folder_a, folder_b, tmp, size=size, data=data, method=method, items=items)
        if out.exists():
            out.rmdir()  # empty: _check_flags refused a non-empty one
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stdout.print(f"wrote {out} ({method}, size {size:g}: {summary})", markup=False)
    return 0


def _check_flags(out: Path, size: float, method: str, items: int) -> None:
    if method not in METHODS:
        raise UserInputError(f"--method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if not 1.0 <= size <= 2.0:
        raise UserInputError(
            f"--size {size:g}: give a number between 1 (one model's width) and 2 (both models' "
            "units side by side)"
        )
    if method == "average" and size != 1.0:
        raise UserInputError("--size: plain averaging keeps one model's width; use --size 1")
    if items < 1:
        raise UserInputError(f"--items {items}: give at least 1 item of data")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"OUT {out}: exists and is not an empty folder; choose a new path")


def _folder(ref: str, flag: str) -> Path:
    from evomerge.model_refs import resolve_model_ref

    folder = Path(resolve_model_ref(ref))
    if not (folder / "config.json").is_file():
        raise UserInputError(
            f"{flag} {ref}: no config.json there; give a model folder or zoo:<zoo>/<model>"
        )
    return folder


def _kind(folder: Path, flag: str) -> str:
    from evomerge.zoo.digits import MODEL_TYPE

    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type == MODEL_TYPE:
        return "digits"
    if model_type == "llama":
        return "llama"
    raise UserInputError(
        f"{flag} {folder}: model_type {model_type!r} is not supported; PLeaS here merges digits "
        "zoo MLPs and Llama models"
    )


def _check_data(kind: str, data: str | None, method: str) -> str | None:
    """``data`` checked for the models' kind (a digits default: the training images)."""
    if kind == "digits":
        from evomerge.zoo.digits import TRANSFORMS

        data = data or "train"
        transform = data.removeprefix("proxy:")
        if data != "train" and not (data.startswith("proxy:") and transform in TRANSFORMS):
            raise UserInputError(f"--data {data!r}: for digits models give {DIGITS_DATA_HELP}")
        return data
    from evomerge.model_merges.lm_zoo import SEEDS_TASKS, task_texts

    if method == "average":
        return data  # averaging reads no data
    if data is None:
        raise UserInputError(
            f"--data: Llama models need data to match on; give zoo task names, e.g. {SEEDS_TASKS}"
        )
    task_texts(data, 1)  # unknown task names fail here, before any model is loaded
    return data


def _digits(a: Path, b: Path, out: Path, *, size, data, method, items) -> str:
    from evomerge.model_merges.digits import merge_digits
    from evomerge.zoo.digits import load_digits_model, save_digits_model

    merged = merge_digits(
        load_digits_model(a), load_digits_model(b), size=size, method=method, data=data
    )
    save_digits_model(merged, out)
    return f"hidden layers {[m.out_features for m in merged.hidden_layers()]}"


def _llama(a: Path, b: Path, out: Path, *, size, data, method, items) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.model_merges.llama import merge_llama
    from evomerge.model_merges.lm_zoo import task_texts

    texts = task_texts(data, items) if method != "average" else []
    tokenizer = AutoTokenizer.from_pretrained(str(a))
    model_a = AutoModelForCausalLM.from_pretrained(str(a))
    model_b = AutoModelForCausalLM.from_pretrained(str(b))
    merged, _ = merge_llama(model_a, model_b, texts, tokenizer, size=size, method=method)
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return f"intermediate_size {merged.config.intermediate_size}"
