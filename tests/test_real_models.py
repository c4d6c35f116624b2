"""Real pretrained LLMs: the zoo entries built from PyPI GGUF packages, and GGUF files as inputs.

The two zoo folders are built once into the zoo cache (tests/helpers/real_models.py); the GGUF
conversion tests use a private cache so they really convert.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from evomerge.errors import UserInputError
from evomerge.io.digests import folder_digest
from evomerge.zoo.build import load_manifest
from tests.helpers.real_models import gemma3_dir, load, smollm2_dir, smollm2_gguf

REPO = Path(__file__).resolve().parents[1]
COMMON_WORDS = {"the", "a", "an", "of", "and", "is", "in", "to", "it", "city", "country", "its"}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            out.update({k: sf.get_tensor(k) for k in sf.keys()})  # noqa: SIM118
    return out


def _greedy(folder: Path, text: str, n: int, *, chat: bool) -> str:
    model, tok = load(folder)
    if chat:
        messages = [{"role": "user", "content": text}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    else:
        ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_smollm2_answers_with_its_chat_template():
    folder = smollm2_dir()
    assert "im_start" in (folder / "chat_template.jinja").read_text()
    answer = _greedy(folder, "What is the capital of France? Answer in one word.", 6, chat=True)
    assert "Paris" in answer, answer
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == load(folder)[1].convert_tokens_to_ids("<|im_end|>")


def test_gemma3_continues_with_real_words():
    text = _greedy(gemma3_dir(), "The capital of France is", 8, chat=False)
    words = re.findall(r"[A-Za-z]+", text.lower())
    assert len(words) >= 3 and COMMON_WORDS & set(words), text
    gen = json.loads((gemma3_dir() / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, 106]  # <eos> and <end_of_turn>


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_folders_tie_the_head_like_transformers(which):
    folder = {"smollm2": smollm2_dir, "gemma3": gemma3_dir}[which]()
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    tensors = _tensors(folder)
    assert "lm_head.weight" not in tensors
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    model, _ = load(folder)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    entry = load_manifest(folder.parent)["models"][folder.name]
    files, digest = folder_digest(folder)
    assert (entry["files"], entry["digest"]) == (files, digest)  # recorded digest = the bytes
    if which == "gemma3":  # the terms of use travel with the weights
        assert (folder / "GEMMA_TERMS.html").is_file()


def _resolve_in_subprocess(ref: Path, cache: Path) -> subprocess.Popen:
    code = "import sys; from evomerge.config import resolve_model_ref as r; print(r(sys.argv[1]))"
    env = {**os.environ, "EVOMERGE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(ref)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """(private cache, converted folder, the two GGUF paths): the SmolLM2 GGUF under two names,
    resolved by two processes at once into an empty cache."""
    from evomerge.zoo.build import cache_root

    root = tmp_path_factory.mktemp("gguf")
    cache, link = root / "cache", root / "renamed.gguf"
    # the C merge kernel is compiled once per machine: share it rather than build it again here
    (cache_root() / "kernels").mkdir(parents=True, exist_ok=True)
    cache.mkdir()
    (cache / "kernels").symlink_to(cache_root() / "kernels", target_is_directory=True)
    link.symlink_to(smollm2_gguf())
    procs = [_resolve_in_subprocess(p, cache) for p in (smollm2_gguf(), link)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    folders = {o.strip().splitlines()[-1] for o, _ in outs}
    assert len(folders) == 1, folders  # same bytes, same cached folder
    # one process converted, the other waited on the lock and found it done
    assert sum("dequantized to bfloat16" in e for _, e in outs) == 1, [e[-500:] for _, e in outs]
    return cache, Path(folders.pop()), [smollm2_gguf(), link]


def test_gguf_input_converts_once_to_the_same_bytes_as_the_zoo(converted):
    cache, folder, _ = converted
    assert folder.parent == cache / "gguf"
    files, _ = folder_digest(folder, skip=("gguf.json",))
    assert files == load_manifest(smollm2_dir().parent)["models"]["instruct"]["files"]


def test_merge_config_takes_gguf_paths(converted, tmp_path, monkeypatch):
    from evomerge.cli import app

    cache, folder, (gguf, link) = converted
    monkeypatch.setenv("EVOMERGE_CACHE", str(cache))
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(
        "merge_method: linear\n"
        f"models:\n  - model: {gguf}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {link}\n    parameters: {{weight: 0.5}}\n"
        "dtype: bfloat16\n"
    )
    res = CliRunner().invoke(app, ["merge", str(cfg), "--out", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output
    merged, source = _tensors(tmp_path / "out"), _tensors(folder)
    assert set(merged) == set(source)  # still tied: no lm_head written
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"]
    for name, t in source.items():
        assert torch.equal(merged[name], t), name
    assert (tmp_path / "out" / "chat_template.jinja").is_file()  # tokenizer files come along


def test_experiment_models_and_base_take_gguf_paths(converted, tmp_path, monkeypatch):
    from evomerge.config import load_experiment
    from evomerge.experiment import resolve_models

    cache, folder, (gguf, link) = converted
    zoo_folder = smollm2_dir()  # from the zoo cache, before the private cache is set
    monkeypatch.setenv("EVOMERGE_CACHE", str(cache))
    (tmp_path / "m.gguf").symlink_to(link)  # relative to the experiment file, like any path
    (tmp_path / "score.py").write_text("def score(model, tok):\n    return 1.0\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        f"models: [m.gguf, {zoo_folder}]\nbase_model: {gguf}\nspace: ps_linear\n"
        "fitness: {python: score.py:score}\nbudget: {max_evals: 2}\n"
    )
    cfg = load_experiment(exp)
    assert resolve_models(cfg) == ((str(folder), str(zoo_folder)), str(folder))


def test_bogus_gguf_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from evomerge.cli import app

    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + os.urandom(256))
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(f"merge_method: linear\nmodels:\n  - model: {bogus}\n  - model: {bogus}\n")
    res = CliRunner().invoke(app, ["merge", str(cfg), "--out", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and str(bogus) in lines[0] and "not a readable GGUF" in lines[0]
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "cache").exists()  # refused before the cache was touched


def test_unsupported_architecture_names_file_and_fix(tmp_path, monkeypatch):
    import gguf
    import numpy as np

    from evomerge.config import resolve_model_ref

    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "not-an-arch")
    writer.add_tensor("blk.0.w.weight", np.ones((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserInputError) as err:
        resolve_model_ref(str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "not-an-arch" in msg
    assert "cannot dequantize" in msg and "safetensors folder" in msg
    left = [p.name for p in (tmp_path / "cache" / "gguf").iterdir() if p.name != ".lock"]
    assert left == [], left  # no folder, no temporary, no link left behind


def test_missing_gguf_file_and_missing_package_errors(tmp_path):
    from evomerge.config import resolve_model_ref
    from evomerge.zoo.real import _versions

    with pytest.raises(UserInputError, match=r"missing\.gguf: GGUF file not found"):
        resolve_model_ref(str(tmp_path / "missing.gguf"))
    (tmp_path / "hf-folder.gguf").mkdir()  # a folder is a folder, whatever its name
    assert resolve_model_ref(str(tmp_path / "hf-folder.gguf")) == str(tmp_path / "hf-folder.gguf")
    with pytest.raises(UserInputError) as err:
        _versions("smollm2", "no-such-package-for-evomerge")
    assert "pip install 'evomerge[real]'" in str(err.value)
    assert "no-such-package-for-evomerge" in str(err.value)


def test_zoo_build_waits_for_a_concurrent_build_of_the_same_folder(tmp_path):
    """A second `zoo build` of a folder another process is building waits on the lock, then
    finds the build done instead of converting again."""
    import shutil
    import time

    from evomerge.io.lock import FileLock

    built, target = smollm2_dir().parent, tmp_path / "zoo"
    code = "import sys; from evomerge.zoo.build import build; print(build('smollm2', sys.argv[1]))"
    with FileLock(target.parent / f".{target.name}.lock"):  # "the other process", mid-build
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(target)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert proc.poll() is None  # waiting on the lock
        shutil.copytree(built, target, copy_function=os.link)  # our build lands
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert out.strip() == str(target) and "dequantized" not in err
