"""``evomerge merge``: the real CLI, and one test per bad-input path — exit 2, one clear line
naming the model/tensor/field, and nothing created at --out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from evomerge.cli import app
from tests.helpers.tiny_models import make_tiny_llama_family

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(scope="module")
def fam(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    return make_tiny_llama_family(tmp_path_factory.mktemp("cli"), n_experts=2, layers=2, hidden=16)


def _cfg(tmp: Path, text: str, **subs: str) -> Path:
    text = textwrap.dedent(text)
    for k, v in subs.items():
        text = text.replace(k, v)
    p = tmp / "cfg.yaml"
    p.write_text(text)
    return p


def _ties(
    tmp: Path, base: str, e0: str, e1: str, method: str = "ties", params: str = "{weight: 0.5}"
) -> Path:
    return _cfg(
        tmp,
        f"""
        merge_method: {method}
        base_model: BASE
        models:
          - {{model: E0, parameters: {params}}}
          - {{model: E1, parameters: {params}}}
        """,
        BASE=base,
        E0=e0,
        E1=e1,
    )


def _fails(cfg: Path, out: Path, *needles: str, extra: tuple[str, ...] = ()) -> None:
    res = CliRunner().invoke(app, ["merge", str(cfg), "--out", str(out), "-q", *extra])
    assert res.exit_code == 2, res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, res.output
    for n in needles:
        assert n in err[0], err[0]
    assert "Traceback" not in res.output
    assert not out.exists(), "nothing may be left at --out"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def _copy(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_cli_merge_matches_mergekit_yaml(fam, tmp_path: Path) -> None:
    """The installed commands end to end: mergekit-yaml and python -m evomerge on one YAML."""
    base, (e0, e1) = fam
    cfg = _ties(tmp_path, base, e0, e1, params="{weight: [0.3, 0.9], density: 0.5}")
    mk = shutil.which("mergekit-yaml") or str(Path(sys.executable).parent / "mergekit-yaml")
    subprocess.run([mk, str(cfg), str(tmp_path / "mk")], env=ENV, check=True, capture_output=True)
    res = subprocess.run(
        [sys.executable, "-m", "evomerge", "merge", str(cfg), "--out", str(tmp_path / "em")],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("merged ties:") and len(res.stdout.strip().splitlines()) == 1
    a, b = (
        load_file(str(tmp_path / "mk" / "model.safetensors")),
        load_file(str(tmp_path / "em" / "model.safetensors")),
    )
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)


def test_unknown_operator(fam, tmp_path: Path) -> None:
    base, (e0, e1) = fam
    _fails(_ties(tmp_path, base, e0, e1, method="tiez"), tmp_path / "out", "tiez", "valid:")


def test_missing_required_parameter(fam, tmp_path: Path) -> None:
    base, (e0, e1) = fam
    _fails(_ties(tmp_path, base, e0, e1, params="{density: 0.5}"), tmp_path / "out", "'weight'", e0)


def test_wrong_model_count(fam, tmp_path: Path) -> None:
    base, (e0, e1) = fam
    cfg = _ties(tmp_path, base, e0, e1, method="slerp", params="{}")
    cfg.write_text(cfg.read_text() + "parameters: {t: 0.5}\n")
    _fails(cfg, tmp_path / "out", "slerp", "got 2")


def test_unknown_key(fam, tmp_path: Path) -> None:
    base, (e0, e1) = fam
    cfg = _ties(tmp_path, base, e0, e1)
    cfg.write_text(cfg.read_text() + "merge_mthod: ties\n")
    _fails(cfg, tmp_path / "out", "merge_mthod")


def test_architecture_mismatch(fam, tmp_path: Path) -> None:
    base, (e0, _) = fam
    _, (other,) = make_tiny_llama_family(tmp_path / "wide", n_experts=1, layers=2, hidden=32)
    _fails(_ties(tmp_path, base, e0, other), tmp_path / "out", other, "hidden_size")


def test_shape_mismatch_without_config_difference(fam, tmp_path: Path) -> None:
    base, (e0, e1) = fam
    bad = _copy(e1, tmp_path / "bad")
    t = load_file(str(bad / "model.safetensors"))
    t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"][:-1]
    save_file(t, str(bad / "model.safetensors"))
    _fails(
        _ties(tmp_path, base, e0, str(bad)),
        tmp_path / "out",
        str(bad),
        "model.layers.1.mlp.up_proj.weight",
        "shape",
    )


def test_missing_tensor(fam, tmp_path: Path) -> None:
    base, (e0, e1) = fam
    bad = _copy(e1, tmp_path / "bad")
    t = load_file(str(bad / "model.safetensors"))
    del t["model.layers.0.self_attn.k_proj.weight"]
    save_file(t, str(bad / "model.safetensors"))
    _fails(
        _ties(tmp_path, base, e0, str(bad)),
        tmp_path / "out",
        str(bad),
        "model.layers.0.self_attn.k_proj.weight",
        "missing",
    )


def test_nan_in_input(fam, tmp_path: Path) -> None:
    base, (e0, e1) = fam
    bad = _copy(e1, tmp_path / "bad")
    t = load_file(str(bad / "model.safetensors"))
    t["model.norm.weight"][3] = float("nan")
    save_file(t, str(bad / "model.safetensors"))
    _fails(
        _ties(tmp_path, base, e0, str(bad)), tmp_path / "out", str(bad), "model.norm.weight", "NaN"
    )


@pytest.mark.parametrize("fused", ["1", "0"])
def test_non_finite_bf16_input_to_linear(fam, tmp_path: Path, monkeypatch, fused: str) -> None:
    """Linear reads bf16 checkpoints as stored and checks them in its own read (the C kernel,
    or the eager fallback): the same one line naming the model and the tensor."""
    monkeypatch.setenv("EVOMERGE_FUSED", fused)
    _, (e0, e1) = fam
    half = []
    for i, src in enumerate((e0, e1)):
        dst = tmp_path / f"bf16_{i}"
        t = {k: v.to(torch.bfloat16) for k, v in load_file(f"{src}/model.safetensors").items()}
        if i == 1:
            t["model.layers.1.mlp.up_proj.weight"][2, 5] = float("inf")
        shutil.copytree(src, dst)
        save_file(t, str(dst / "model.safetensors"))
        half.append(str(dst))
    cfg = _cfg(
        tmp_path,
        """
        merge_method: linear
        models:
          - {model: E0, parameters: {weight: 0.5}}
          - {model: E1, parameters: {weight: 0.5}}
        """,
        E0=half[0],
        E1=half[1],
    )
    _fails(cfg, tmp_path / "out", half[1], "model.layers.1.mlp.up_proj.weight", "NaN/Inf")


@pytest.mark.parametrize("damage", ["garbage_header", "truncated"])
def test_corrupt_safetensors(fam, tmp_path: Path, damage: str) -> None:
    base, (e0, e1) = fam
    bad = _copy(e1, tmp_path / "bad")
    f = bad / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(
        raw[:8] + b"{not json" + raw[17:] if damage == "garbage_header" else raw[: len(raw) // 2]
    )
    _fails(
        _ties(tmp_path, base, e0, str(bad)),
        tmp_path / "out",
        "model.safetensors",
        "corrupt" if damage == "garbage_header" else "truncated",
    )


def test_pickle_refused_unless_allowed(fam, tmp_path: Path) -> None:
    base, (e0, e1) = fam
    pk = _copy(e1, tmp_path / "pk")
    torch.save(load_file(str(pk / "model.safetensors")), pk / "pytorch_model.bin")
    (pk / "model.safetensors").unlink()
    cfg = _ties(tmp_path, base, e0, str(pk))
    _fails(cfg, tmp_path / "out", "pickle", "--allow-pickle")
    res = CliRunner().invoke(
        app, ["merge", str(cfg), "--out", str(tmp_path / "ok"), "-q", "--allow-pickle"]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ok" / "model.safetensors").is_file()


def test_missing_model_folder(fam, tmp_path: Path) -> None:
    base, (e0, _) = fam
    _fails(_ties(tmp_path, base, e0, str(tmp_path / "nope")), tmp_path / "out", "nope", "not found")


def test_existing_out_not_touched(fam, tmp_path: Path) -> None:
    base, (e0, e1) = fam
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = CliRunner().invoke(
        app, ["merge", str(_ties(tmp_path, base, e0, e1)), "--out", str(out), "-q"]
    )
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
