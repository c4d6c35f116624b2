"""PEFT LoRA adapters read as weight deltas (Hu et al., 2021, *LoRA: Low-Rank Adaptation of
Large Language Models*): a targeted weight W becomes W + s·B·A, with PEFT's scaling
s = lora_alpha / r, or lora_alpha / sqrt(r) with ``use_rslora`` (Kalajdzievski, 2023, rsLoRA).

This is exactly what ``peft``'s ``merge_and_unload()`` computes (``LoraLayer.get_delta_weight``:
``transpose(B @ A, fan_in_fan_out) * scaling``, added to the weight; embeddings transposed), in
the same order of float32 operations, so the applied weights equal its saved folder. It is done
in memory, one tensor at a time, when a merge or a worker reads the tensor: nothing is written.

Also understood: per-module ``rank_pattern`` / ``alpha_pattern`` (PEFT's own matching), LoRA on
embeddings, ``lora_bias`` (b += s·b_B), and full tensors the adapter saved (``modules_to_save``,
``bias: all``, the embedding saved with a resized vocabulary), which replace the base's.
DoRA on linear layers (Liu et al., 2024, *DoRA: Weight-Decomposed Low-Rank Adaptation*) is
applied as peft merges it: W' = m / ||W + s·B·A||_row · (W + s·B·A).
Other PEFT variants (aLoRA, KaSA, ...) and adapters that expect a base modified at init (PiSSA,
OLoRA, CorDA, LoftQ) are refused with the key to blame.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import UserInputError
from evomerge.io.safetensors_io import TensorInfo, read_header, read_tensor

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
MERGE_FIX = "merge it with peft's merge_and_unload() and give the saved folder instead"
# config keys whose truthy value means the merged weight is not W + s·B·A
UNSUPPORTED_KEYS = {
    "alora_invocation_tokens": "aLoRA (activated only after its invocation tokens)",
    "use_qalora": "QALoRA",
    "use_bdlora": "BD-LoRA",
    "kasa_config": "KaSA",
    "monteclora_config": "MonteCLoRA",
    "arrow_config": "Arrow routing",
    "layer_replication": "layer_replication (it changes the model's depth)",
    "target_parameters": "target_parameters (LoRA on bare parameters)",
    "trainable_token_indices": "trainable tokens",
}
# initialisations that rewrite the base weights: the saved A/B are relative to that new base
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


@dataclass
class Target:
    """What the adapter does to one base tensor."""

    module: str  # the base module, e.g. model.layers.0.self_attn.q_proj
    a: TensorInfo | None = None
    b: TensorInfo | None = None
    embedding: bool = False  # lora_embedding_A/B: the product is transposed
    bias_of: str | None = None  # lora_B.bias of this module's LoRA
    full: TensorInfo | None = None  # a whole tensor saved by the adapter: replaces the base's
    magnitude: TensorInfo | None = None  # DoRA's m: one magnitude per output row


class LoraAdapter:
    """One PEFT LoRA adapter folder; ``base`` is the folder of the model it applies to (given,
    as in mergekit's BASE+ADAPTER, or taken from ``base_model_name_or_path``)."""

    def __init__(self, folder: str | Path, base: str | Path | None = None) -> None:
        self.folder = Path(folder)
        self.file = self.folder / ADAPTER_WEIGHTS
        self.config = _read_config(self.folder)
        _check_supported(self.config, self.folder / ADAPTER_CONFIG)
        self.base = Path(base) if base is not None else _base_from_config(self)
        if not self.file.is_file():
            raise UserInputError(
                f"{self.folder}: no {ADAPTER_WEIGHTS} (pickle adapter_model.bin is refused); "
                "re-save the adapter with save_pretrained(safe_serialization=True)"
            )
        infos, _ = read_header(self.file)
        self.targets = _targets(infos, self.file)

    def scaling(self, module: str) -> float:
        """PEFT's ``LoraModel._create_and_replace``: r and alpha from the first matching
        pattern (``get_pattern_key``), else the config's."""
        c = self.config
        r = _pattern_value(c.get("rank_pattern") or {}, module, c.get("r", 8))
        alpha = _pattern_value(c.get("alpha_pattern") or {}, module, c.get("lora_alpha", 8))
        return alpha / math.sqrt(r) if c.get("use_rslora") else alpha / r

    def rank(self, module: str) -> int:
        c = self.config
        return int(_pattern_value(c.get("rank_pattern") or {}, module, c.get("r", 8)))

    def expected_shape(self, name: str, t: Target) -> tuple[int, ...]:
        """The base tensor shape this entry fits (and a rank check on the way)."""
        if t.full is not None:
            return t.full.shape
        if t.bias_of is not None:
            return (t.b.shape[0],)  # type: ignore[union-attr]
        if t.a is None or t.b is None:
            raise UserInputError(
                f"{self.file}: {name} has only one of lora_A / lora_B; the adapter is incomplete"
                " — re-save it"
            )
        a, b = t.a.shape, t.b.shape
        if t.magnitude is not None and (t.embedding or self.config.get("fan_in_fan_out")):
            raise UserInputError(
                f"{self.file}: DoRA on {t.module} (an embedding or fan_in_fan_out layer) is not "
                f"supported, only on linear layers; {MERGE_FIX}"
            )
        if t.magnitude is not None and tuple(t.magnitude.shape) != (b[0],):
            raise UserInputError(
                f"{self.file}: {t.module}'s lora_magnitude_vector {list(t.magnitude.shape)} does "
                f"not match its lora_B {list(b)}; re-save the adapter"
            )
        r = self.rank(t.module)
        if len(a) != 2 or len(b) != 2 or a[0] != r or b[1] != r:
            raise UserInputError(
                f"{self.file}: {t.module}'s lora_A {list(a)} / lora_B {list(b)} are not rank {r} "
                f"as {ADAPTER_CONFIG} says (r / rank_pattern); re-save the adapter"
            )
        out = (b[0], a[1])
        fan = t.embedding or bool(self.config.get("fan_in_fan_out"))
        return out[::-1] if fan else out

    def check_base(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Every targeted tensor exists in the base with the shape the adapter fits."""
        for name, t in self.targets.items():
            want = self.expected_shape(name, t)
            have = shapes.get(name)
            if have is None or tuple(have) != tuple(want):
                got = "has no such tensor" if have is None else f"has {list(have)}"
                raise UserInputError(
                    f"{self.file}: tensor {name} {list(want)} does not fit base {self.base} "
                    f"(it {got}); this adapter was trained on another base — give its base as "
                    "BASE+ADAPTER or fix base_model_name_or_path in adapter_config.json"
                )

    def apply(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """The base tensor ``w`` with this adapter applied (float32), or ``w`` untouched."""
        t = self.targets.get(name)
        if t is None:
            return w
        if t.full is not None:
            w = read_tensor(t.full)
        if t.bias_of is not None:
            bias = read_tensor(t.b).float()  # type: ignore[arg-type]
            return w.float() + bias * self.scaling(t.module)
        if t.a is None:
            return w.float() if w.is_floating_point() else w
        w = w.float()
        if t.magnitude is None:
            return w + self.delta(t)
        return self._dora(t, w, self.delta(t))

    def _dora(self, t: Target, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """DoRA (Liu et al., 2024): W' = m / ||W + ΔW||_row · (W + ΔW), as peft's
        ``DoraLinearVariant.merge_unsafe`` computes it (the norm of each output row)."""
        norm = torch.linalg.norm(w + 1 * delta, dim=1)  # (peft: get_weight_norm, scaling=1)
        factor = read_tensor(t.magnitude).float() / norm  # type: ignore[arg-type]
        return factor.view(-1, 1) * (w + delta)

    def delta(self, t: Target) -> torch.Tensor:
        a, b = read_tensor(t.a).float(), read_tensor(t.b).float()  # type: ignore[arg-type]
        fan = t.embedding or bool(self.config.get("fan_in_fan_out"))
        prod = b @ a
        return (prod.T if fan else prod) * self.scaling(t.module)


def _read_config(folder: Path) -> dict[str, Any]:
    p = folder / ADAPTER_CONFIG
    if not p.is_file():
        raise UserInputError(f"{folder}: no {ADAPTER_CONFIG}; is this a PEFT adapter folder?")
    try:
        data = json.loads(p.read_text())
    except ValueError as err:
        raise UserInputError(f"{p}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{p}: expected a JSON object")
    return data


def _check_supported(c: dict[str, Any], where: Path) -> None:
    kind = c.get("peft_type")
    if kind != "LORA":
        raise UserInputError(
            f"{where}: peft_type {kind!r} is not supported (LoRA only); {MERGE_FIX}"
        )
    for key, what in UNSUPPORTED_KEYS.items():
        if c.get(key):
            raise UserInputError(f"{where}: {key}: {what} adapters are not supported; {MERGE_FIX}")
    init = c.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise UserInputError(
            f"{where}: init_lora_weights {init!r} changed the base weights at init, so this "
            "adapter needs that modified base; save it with save_pretrained("
            "path_initial_model_for_weight_conversion=...) or " + MERGE_FIX
        )


def _base_from_config(ad: LoraAdapter) -> Path:
    name = ad.config.get("base_model_name_or_path")
    cfg = ad.folder / ADAPTER_CONFIG
    if not name:
        raise UserInputError(
            f"{cfg}: no base_model_name_or_path; give the base as BASE+ADAPTER "
            f"(e.g. path/to/base+{ad.folder})"
        )
    for cand in (Path(name).expanduser(), ad.folder / name):
        if cand.is_dir():
            return cand.resolve()
    raise UserInputError(
        f"{cfg}: base_model_name_or_path {name!r} is not a local folder; download the base and "
        f"give it as BASE+ADAPTER (e.g. path/to/base+{ad.folder}), or set "
        "base_model_name_or_path to its folder"
    )


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # peft.utils.other.get_pattern_key: the first key that matches a dotted suffix of the name
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _targets(infos: dict[str, TensorInfo], file: Path) -> dict[str, Target]:
    """Base tensor name -> Target, from the adapter's PEFT key names."""
    out: dict[str, Target] = {}
    for key, info in infos.items():
        if not key.startswith(PREFIX):
            raise UserInputError(
                f"{file}: tensor {key!r} is not a PEFT model key (no {PREFIX!r} prefix); "
                f"only adapters saved by peft's save_pretrained are read — {MERGE_FIX}"
            )
        _add(out, key[len(PREFIX) :], info, file)
    return out


_LORA = re.compile(r"^(.+)\.(lora_A|lora_B)\.(weight|bias)$")
_EMB = re.compile(r"^(.+)\.(lora_embedding_A|lora_embedding_B)$")
_MAG = re.compile(r"^(.+)\.lora_magnitude_vector(?:\.weight)?$")


def _add(out: dict[str, Target], key: str, info: TensorInfo, file: Path) -> None:
    m = _LORA.match(key)
    if m:
        module, which, kind = m.groups()
        if kind == "bias":
            if which != "lora_B":
                raise UserInputError(f"{file}: unexpected tensor {key!r}; {MERGE_FIX}")
            t = out.setdefault(f"{module}.bias", Target(module))
            t.b, t.bias_of = info, module
            return
        t = out.setdefault(f"{module}.weight", Target(module))
        setattr(t, "a" if which == "lora_A" else "b", info)
        return
    m = _EMB.match(key)
    if m:
        module, which = m.groups()
        t = out.setdefault(f"{module}.weight", Target(module, embedding=True))
        t.embedding = True
        setattr(t, "a" if which.endswith("A") else "b", info)
        return
    m = _MAG.match(key)
    if m:
        module = m.group(1)
        out.setdefault(f"{module}.weight", Target(module)).magnitude = info
        return
    if "lora_" in key:
        raise UserInputError(f"{file}: tensor {key!r} is not plain LoRA; {MERGE_FIX}")
    # a whole tensor (modules_to_save, bias: all, a saved embedding): replaces the base's
    name = key.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
    module = name.rsplit(".", 1)[0]
    out.setdefault(name, Target(module)).full = info
