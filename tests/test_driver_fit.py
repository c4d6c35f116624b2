"""Every registered driver against every space kind: a pair that fits builds and proposes a
recipe on the real lm-skills zoo; a pair that does not is one line naming both and what fits,
before a run folder exists."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from evomerge.config import parse_experiment, resolve_model_ref
from evomerge.drivers import check_fit, list_drivers
from evomerge.errors import UserInputError
from evomerge.session import build_driver, build_space

EXPERTS = ["zoo:lm-skills/cipher", "zoo:lm-skills/shift"]
BASE = "zoo:lm-skills/base"
SPACES = {
    "parameter": {"kind": "parameter", "merge_method": "linear", "params": ["weight"]},
    "dataflow": {"kind": "dataflow", "repeats": 1},
    "hybrid": {"kind": "hybrid", "repeats": 1, "winner": "WINNER", "partner": 1},
    "fw_pool": {"kind": "fw_pool", "granularity": "task"},
    "fw_pool_ties": {"kind": "fw_pool", "granularity": "task", "variant": "ties"},
}
POOL_ONLY = {"frank_wolfe", "adamerging"}
OPTIONS = {  # what the gradient drivers need to be built at all
    "adamerging": {"objective": {"kind": "lm", "tasks": ["zoo_cipher"]}},
    "frank_wolfe": {"proxy": {"kind": "lm", "data": "proxy.jsonl"}},
}
FITS = {
    **{(d, s): d not in POOL_ONLY for d in list_drivers() for s in SPACES},
    **{(d, "fw_pool"): True for d in list_drivers()},
    **{(d, "fw_pool_ties"): d == "frank_wolfe" for d in list_drivers()},
}


def _cfg(driver: str, space: str):
    sp = dict(SPACES[space])
    if sp.get("winner") == "WINNER":  # the hybrid's model A: any materialized model folder
        sp["winner"] = resolve_model_ref(EXPERTS[0])
    return parse_experiment(
        {
            "models": EXPERTS,
            "base_model": BASE,
            "space": sp,
            "fitness": {"python": "score.py:score"},
            "driver": {"name": driver, "options": OPTIONS.get(driver, {})},
            "budget": {"max_evals": 4},
        }
    )


@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("driver", list_drivers())
def test_every_driver_space_pair(driver, space, tmp_path):
    cfg = _cfg(driver, space)
    if not FITS[(driver, space)]:
        with pytest.raises(UserInputError) as err:
            check_fit(driver, cfg.space)
        msg = str(err.value)
        assert "\n" not in msg and f"driver {driver!r} does not fit" in msg
        assert f"space kind {cfg.space.kind!r}" in msg and "use driver" in msg
        return
    check_fit(driver, cfg.space)
    s = build_space(cfg, tmp_path)
    d = build_driver(cfg, s)
    cand = d.ask()[0]
    assert cand.x.shape == (s.dim,) and np.all(np.isfinite(cand.x))
    assert s.decode(cand.x).digest()


def test_misfit_names_what_fits():
    cfg = _cfg("frank_wolfe", "parameter")
    with pytest.raises(UserInputError, match="Frank-Wolfe steps through a pool") as err:
        check_fit("frank_wolfe", cfg.space)
    assert "cma_es" in str(err.value) and "random" in str(err.value)


def test_cli_frank_wolfe_on_parameter_space_is_one_line(tmp_path):
    exp = tmp_path / "exp.yaml"
    (tmp_path / "score.py").write_text("def score(model, tokenizer):\n    return 0.0\n")
    exp.write_text(
        textwrap.dedent(f"""\
        models: {EXPERTS}
        base_model: {BASE}
        space: {{kind: parameter, merge_method: linear}}
        fitness: {{python: score.py:score}}
        driver: {{name: frank_wolfe}}
        budget: {{max_evals: 4}}
        """)
    )
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "evomerge", "search", str(exp), "--run-dir", str(run_dir)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "frank_wolfe" in lines[0] and "'parameter'" in lines[0] and "fw_pool" in lines[0]
    assert not Path(run_dir).exists()
