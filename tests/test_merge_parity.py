"""Parity with mergekit 0.1.5: the same YAML through mergekit and ``evomerge`` gives the same
tensors (float32, 1e-5) on tiny random Llamas — models and slices layouts, gradients, filters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomerge.merge.engine import run_merge
from evomerge.recipe_mergekit import load_config
from tests.helpers.tiny_models import make_tiny_llama_family

pytest.importorskip("mergekit")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

CONFIGS = {
    "linear": """
        merge_method: linear
        models:
          - {model: BASE, parameters: {weight: 0.5}}
          - {model: E0, parameters: {weight: [0.1, 0.9]}}
          - {model: E1, parameters: {weight: 0.3}}
        """,
    "task_arithmetic": """
        merge_method: task_arithmetic
        base_model: BASE
        models:
          - {model: E0, parameters: {weight: 0.7}}
          - {model: E1, parameters: {weight: [1.0, 0.2, 0.5]}}
          - {model: E2, parameters: {weight: 0.4}}
        parameters: {lambda: 0.8}
        """,
    "ties": """
        merge_method: ties
        base_model: BASE
        models:
          - model: E0
            parameters: {weight: [0.2, 0.8], density: 0.5}
          - model: E1
            parameters:
              weight: [{filter: mlp, value: 0.3}, {value: 0.6}]
              density: 0.7
          - {model: E2, parameters: {weight: 0.5, density: 0.3}}
        parameters: {normalize: true}
        """,
    "slerp": """
        merge_method: slerp
        base_model: BASE
        models: [{model: BASE}, {model: E0}]
        parameters:
          t:
            - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}
            - {filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}
            - {value: 0.5}
        """,
    "model_stock": """
        merge_method: model_stock
        base_model: BASE
        models: [{model: E0}, {model: E1}, {model: E2}]
        """,
    "nuslerp": """
        merge_method: nuslerp
        models:
          - {model: E0, parameters: {weight: 0.3}}
          - {model: E1, parameters: {weight: 0.7}}
        """,
    "nuslerp_base": """
        merge_method: nuslerp
        base_model: BASE
        models:
          - {model: E0, parameters: {weight: 0.6}}
          - {model: E1, parameters: {weight: 0.4}}
        parameters: {nuslerp_row_wise: true, nuslerp_flatten: false}
        """,
    "passthrough_slices": """
        merge_method: passthrough
        slices:
          - sources: [{model: BASE, layer_range: [0, 2]}]
          - sources:
              - model: E0
                layer_range: [1, 3]
                parameters:
                  scale: [{filter: o_proj, value: 0.5}, {filter: down_proj, value: 0.5}, {value: 1.0}]
          - sources: [{model: E1, layer_range: [2, 4]}]
        """,
    "gradient_filter_slices": """
        merge_method: ties
        base_model: BASE
        slices:
          - sources:
              - {model: BASE, layer_range: [0, 2]}
              - {model: E0, layer_range: [0, 2], parameters: {weight: [0.2, 1.0], density: 0.6}}
              - model: E1
                layer_range: [0, 2]
                parameters:
                  weight: [{filter: q_proj, value: [0.9, 0.1]}, {value: 0.5}]
            parameters: {density: 0.4}
          - sources:
              - {model: BASE, layer_range: [2, 4]}
              - {model: E0, layer_range: [2, 4], parameters: {weight: 0.3}}
              - {model: E1, layer_range: [2, 4], parameters: {weight: [0.7, 0.4]}}
        parameters: {density: 0.8, normalize: false}
        """,
}

MK_DRIVER = """
import json, sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
for cfg, out in json.loads(sys.argv[1]):
    conf = MergeConfiguration.model_validate(yaml.safe_load(open(cfg)))
    run_merge(conf, out, MergeOptions(copy_tokenizer=False, write_model_card=False, lazy_unpickle=False))
"""


def _write(cfg: str, fam: dict[str, str], path: Path) -> Path:
    text = textwrap.dedent(cfg)
    for key in sorted(fam, key=len, reverse=True):
        text = text.replace(key, fam[key])
    path.write_text(text + "dtype: float32\n")
    return path


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Every config merged by mergekit (one subprocess for all) and by evomerge."""
    root = tmp_path_factory.mktemp("parity")
    base, experts = make_tiny_llama_family(root, n_experts=3, layers=4, hidden=32)
    fam = {"BASE": base, **{f"E{i}": e for i, e in enumerate(experts)}}
    jobs, out = [], {}
    for name, cfg in CONFIGS.items():
        path = _write(cfg, fam, root / f"{name}.yaml")
        jobs.append((str(path), str(root / f"mk_{name}")))
        run_merge(load_config(path), root / f"em_{name}")
        out[name] = (root / f"mk_{name}", root / f"em_{name}")
    proc = subprocess.run(
        [sys.executable, "-c", MK_DRIVER, json.dumps(jobs)], env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_tensors_as_mergekit(merged: dict, name: str) -> None:
    mk_dir, em_dir = merged[name]
    mk, em = _tensors(mk_dir), _tensors(em_dir)
    assert set(mk) == set(em)
    for k in mk:
        assert mk[k].shape == em[k].shape, k
        torch.testing.assert_close(em[k], mk[k].float(), atol=1e-5, rtol=0, msg=k)
    cfg_mk = json.loads((mk_dir / "config.json").read_text())
    cfg_em = json.loads((em_dir / "config.json").read_text())
    assert cfg_em["num_hidden_layers"] == cfg_mk["num_hidden_layers"]


def test_merges_differ_from_inputs(merged: dict) -> None:
    """Guard against a vacuous parity: the merges really changed the weights."""
    _, em_dir = merged["ties"]
    base = yaml.safe_load((em_dir / "recipe.yaml").read_text())["base_model"]
    src, em = _tensors(Path(base)), _tensors(em_dir)
    name = "model.layers.1.mlp.up_proj.weight"
    assert (em[name] - src[name]).abs().max() > 1e-3


def test_passthrough_stack_depth(merged: dict) -> None:
    _, em_dir = merged["passthrough_slices"]
    assert json.loads((em_dir / "config.json").read_text())["num_hidden_layers"] == 6
