"""Merge one mergekit YAML with mergekit 0.1.5 and with evomerge, and measure how the outputs
differ: shared by tests/test_real_parity.py and benchmarks/real_parity.py.

Configs name their models BASE, V0, V1, V2 (replaced by folders). mergekit runs in a child
process (one for all configs: its import and thread settings stay out of the test process).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

MK_DRIVER = """
import json, sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
for cfg, out in json.loads(sys.argv[1]):
    conf = MergeConfiguration.model_validate(yaml.safe_load(open(cfg)))
    run_merge(conf, out, MergeOptions(copy_tokenizer=False, write_model_card=False,
                                      lazy_unpickle=False, quiet=True))
"""


def write_config(cfg: str, fam: dict[str, str], path: Path, dtype: str) -> Path:
    text = textwrap.dedent(cfg)
    for key, folder in fam.items():  # whole words: a folder name may contain "V1"
        text = re.sub(rf"\b{key}\b", lambda _m, f=folder: f, text)
    path.write_text(text + f"dtype: {dtype}\n")
    return path


def merge_both(
    configs: dict[str, str], fam: dict[str, str], root: Path, dtype: str = "float32"
) -> dict[str, tuple[Path, Path]]:
    """{name: (mergekit output, evomerge output)} for every config."""
    from evomerge.merge.engine import run_merge
    from evomerge.recipe_mergekit import load_config

    jobs, out = [], {}
    for name, cfg in configs.items():
        path = write_config(cfg, fam, root / f"{name}-{dtype}.yaml", dtype)
        mk, em = root / f"mk_{name}_{dtype}", root / f"em_{name}_{dtype}"
        if not (em / "config.json").is_file():
            run_merge(load_config(path), em)
        if not (mk / "config.json").is_file():
            jobs.append((str(path), str(mk)))
        out[name] = (mk, em)
    if jobs:
        proc = subprocess.run(
            [sys.executable, "-c", MK_DRIVER, json.dumps(jobs)],
            env=ENV,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@dataclass
class Diff:
    """How evomerge's merge (em) differs from mergekit's (mk) over all tensors; with float32
    references, how far each is from its own tool's float32 merge (each tool against itself:
    top-k ties may be resolved differently by the two tools, not by the dtype)."""

    numel: int = 0
    differing: int = 0  # elements not bit-equal
    max_abs: float = 0.0
    worst: str = ""
    err_mk: float = 0.0  # sum |mk - ref_mk|
    err_em: float = 0.0  # sum |em - ref_em|
    em_closer: int = 0  # differing elements where em is strictly closer to its reference
    mk_closer: int = 0

    @property
    def frac(self) -> float:
        return self.differing / max(self.numel, 1)


def compare(
    mk: dict[str, torch.Tensor],
    em: dict[str, torch.Tensor],
    refs: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> Diff:
    if set(mk) != set(em):
        raise AssertionError(f"tensor names differ: {sorted(set(mk) ^ set(em))[:5]}")
    d = Diff()
    for name in sorted(mk):
        a, b = mk[name].float(), em[name].float()
        if a.shape != b.shape:
            raise AssertionError(f"{name}: shape {tuple(b.shape)} vs mergekit {tuple(a.shape)}")
        diff = (a - b).abs()
        d.numel += a.numel()
        d.differing += int((a != b).sum())
        m = float(diff.max()) if diff.numel() else 0.0
        if m > d.max_abs:
            d.max_abs, d.worst = m, name
        if refs is not None:
            ea, eb = (a - refs[0][name]).abs(), (b - refs[1][name]).abs()
            d.err_mk += float(ea.double().sum())
            d.err_em += float(eb.double().sum())
            changed = a != b
            d.em_closer += int((changed & (eb < ea)).sum())
            d.mk_closer += int((changed & (ea < eb)).sum())
    return d


def tie_report(
    mk: torch.Tensor,
    em: torch.Tensor,
    base: torch.Tensor,
    experts: list[torch.Tensor],
    positions: list[int],
) -> tuple[int, int]:
    """(differing elements, those not explained by a tie). A top-k sparsifier keeps the entries
    of τ_i between fixed positions of its ascending sorted |τ_i| (TIES: the top k; breadcrumbs: a
    middle range); both tools keep exactly that many. An element where the merges differ is
    explained when, for some expert i, its |τ_i| equals |τ_i| at one of those cut positions:
    a tie there, where the tools may keep different members."""
    where = (mk != em).reshape(-1)
    unexplained = where.clone()
    for e in experts:
        mag = (e.float() - base.float()).abs().reshape(-1)
        cuts = torch.sort(mag).values[positions]
        for c in cuts:
            unexplained &= mag != c
    return int(where.sum()), int(unexplained.sum())
