"""A GGUF file (llama.cpp's single-file format) as an ordinary HF model folder.

Merging needs plain float tensors under transformers' names. transformers can read a GGUF of a
known architecture and dequantize it (``from_pretrained(folder, gguf_file=...)``), but refuses to
``save_pretrained`` the result ("quantized with gguf"). So the weights are taken from that model,
cast to bfloat16 and loaded into a fresh model built from the same config without its
``quantization_config``, which transformers then saves the way it saves any model: a tied head
is not written, the tokenizer and its chat template come from the GGUF's own metadata.

The weights are the *dequantized quantized* ones (Q4 blocks expanded to floats), not the
original checkpoint's: a merge of GGUF inputs starts from the quantized models.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError

log = logging.getLogger(__name__)
# tokenizer_config.json keys that record how this one load happened, not what the tokenizer is
_LOAD_ONLY_KEYS = ("is_local", "local_files_only")


def describe(path: Path) -> tuple[str, str]:
    """(architecture, its main tensor types) from the file's header; a clear error if not GGUF."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UserInputError(
            f"{path}: reading GGUF files needs the gguf package: pip install 'evomerge[real]'"
        ) from None
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except Exception as err:  # noqa: BLE001 - any parse failure means "not a usable GGUF"
        raise UserInputError(
            f"{path}: not a readable GGUF file ({type(err).__name__}: {err}); "
            "check the download or give a HF model folder instead"
        ) from None
    sizes: collections.Counter[str] = collections.Counter()
    for t in reader.tensors:  # by elements: the many small F32 norms do not hide Q4_K
        sizes[t.tensor_type.name] += int(t.n_elements)
    return arch, "/".join(name for name, _ in sizes.most_common(2)) or "no tensors"


def _unsupported(path: Path, arch: str, err: BaseException) -> UserInputError:
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        known = ", ".join(sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}))
    except ImportError:
        known = "see transformers' GGUF docs"
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return UserInputError(
        f"{path}: transformers cannot dequantize this GGUF (architecture {arch!r}: {detail}); "
        f"it reads {known} -- give the model's HF safetensors folder instead, or upgrade "
        "transformers"
    )


def _clean_config(config: Any) -> Any:
    """The config without the GGUF loading state, stored as bfloat16."""
    d = config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path"):
        d.pop(key, None)
    d["dtype"] = "bfloat16"
    return type(config).from_dict(d)


def _stop_ids(tok: Any, eos_tokens: Sequence[str]) -> int | list[int] | None:
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for t in eos_tokens:
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id and i not in ids:
            ids.append(i)
    return ids[0] if len(ids) == 1 else (ids or None)


def _load(path: Path, src: Path, arch: str) -> tuple[Any, Any]:
    """The dequantized float32 model and the tokenizer, read through a private link so nothing
    else in the GGUF's folder (a stray config.json) is picked up."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = path.parent
    try:
        # float32 is transformers' fast GGUF path; the bf16 cast happens once, below
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=path.name, dtype=torch.float32, local_files_only=True
        )
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=path.name, local_files_only=True)
    except (ValueError, NotImplementedError, KeyError, TypeError) as err:
        raise _unsupported(src, arch, err) from None
    return model, tok


def convert(
    src: Path, out: Path, *, eos_tokens: Sequence[str] = (), label: str | None = None
) -> None:
    """Write the GGUF file ``src`` as a bf16 HF folder ``out`` (created; the caller publishes it
    atomically). ``eos_tokens``: extra stop tokens for generation_config (a chat turn's end);
    ``label``: what the log line calls the file (default: its path)."""
    arch, qtype = describe(src)
    link = out.parent / f".{out.name}.src"
    link.mkdir(parents=True, exist_ok=True)
    (link / src.name).unlink(missing_ok=True)
    os.symlink(src.resolve(), link / src.name)
    try:
        model, tok = _load(link / src.name, src, arch)
    finally:
        (link / src.name).unlink(missing_ok=True)
        link.rmdir()
    config, state = _bf16_state(model)
    del model  # the float32 copy goes before the bf16 model is built and saved
    _save(config, state, tok, out, eos_tokens)
    log.warning(
        "%s: %s GGUF (%s) dequantized to bfloat16 -- these are the quantized weights expanded "
        "to floats, not the original checkpoint's",
        label or src,
        arch,
        qtype,
    )


def _bf16_state(model: Any) -> tuple[Any, dict[str, Any]]:
    import torch

    state, cast = {}, {}
    for name, t in model.state_dict().items():  # a tied head is the embedding: cast it once
        key = (t.data_ptr(), tuple(t.shape))
        state[name] = cast[key] = cast[key] if key in cast else t.to(torch.bfloat16)
    return _clean_config(model.config), state


def _save(config: Any, state: dict, tok: Any, out: Path, eos_tokens: Sequence[str]) -> None:
    """Save through a fresh bf16 model: transformers will not save the GGUF-loaded one."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    with torch.device("meta"):  # no second allocation: the bf16 tensors are assigned as is
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    fresh.load_state_dict(state, assign=True, strict=True)
    fresh.tie_weights()  # a tied head shares the embedding; save_pretrained then omits it
    fresh.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=_stop_ids(tok, eos_tokens),
        pad_token_id=tok.pad_token_id,
    )
    tok.model_max_length = getattr(config, "max_position_embeddings", tok.model_max_length)
    fresh.save_pretrained(out, max_shard_size="50GB")
    tok.save_pretrained(out)
    _strip_load_keys(out / "tokenizer_config.json")


def _strip_load_keys(path: Path) -> None:
    if path.is_file():
        d = json.loads(path.read_text())
        for k in _LOAD_ONLY_KEYS:
            d.pop(k, None)
        path.write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n")
