"""The config only validates; the builder resolves each model once; workers get a small spec.

On the real lm-skills zoo (built once into the zoo cache) and the shipped demo experiment.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

import evomerge.model_refs as model_refs
from evomerge.build import open_search
from evomerge.config import ExperimentConfig, load_experiment, parse_experiment
from evomerge.errors import UserInputError
from evomerge.experiment import resolve_experiment, resolve_models
from evomerge.workers.ray_factory import SpecWorkerFactory

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "toy_ps_cmaes.yaml"


def test_validators_read_no_file(tmp_path):
    data = {
        "models": ["a", "b"],
        "space": "ps_dare_ties",  # a preset name: a file to look up
        "fitness": {"python": "score.py:score"},
        "budget": {"max_evals": 2},
        "base_dir": str(tmp_path),
    }
    with pytest.raises(ValidationError, match="space"):
        ExperimentConfig.model_validate(data)  # the model itself does not look the preset up
    cfg = parse_experiment(data)  # the loader does, before validating
    assert cfg.space.kind == "parameter" and cfg.space.merge_method == "dare_ties"


def test_loading_builds_no_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    body = DEMO.read_text().replace("zoo:lm-skills/cipher", "zoo:lm-skills/no_such_model")
    exp = tmp_path / "exp.yaml"
    exp.write_text(body)
    cfg = load_experiment(exp)  # validated without building or finding any zoo
    assert cfg.models[0] == "zoo:lm-skills/no_such_model"
    assert not (tmp_path / "cache").exists()
    bad = cfg.model_copy(update={"models": ["zoo:lm-skills", *cfg.models[1:]]})
    with pytest.raises(UserInputError, match="zoo:<zoo>/<model>"):
        resolve_models(bad)  # resolving is where a bad reference surfaces


def test_open_search_resolves_each_model_once(tmp_path, monkeypatch):
    cfg = load_experiment(DEMO)
    resolve_models(cfg)  # the zoo is built (or found) before counting
    calls: list[str] = []
    real = model_refs.resolve_model_ref

    def counted(ref: str) -> str:
        calls.append(ref)
        return real(ref)

    monkeypatch.setattr(model_refs, "resolve_model_ref", counted)
    s = open_search(cfg, tmp_path / "run")
    try:
        models, base = s.experiment.models, s.experiment.base
        assert all(Path(m).is_dir() for m in models) and Path(base).is_dir()
        assert s.space.dim == 16  # 4 experts x 2 layer groups x (weight, density)
        # the worker scores a candidate from its spec: it resolves nothing again
        (result,) = s.evaluator.evaluate([s.space.decode(s.space.x0())])
        assert result.ok, result.error
        assert sorted(calls) == sorted([*cfg.models, cfg.base_model])
    finally:
        s.close()


def test_workers_get_a_small_spec_not_the_config(tmp_path):
    cfg = load_experiment(DEMO, {"evaluation.stats_cache": 0.5, "evaluation.threads": 1})
    exp = resolve_experiment(cfg, tmp_path / "run")
    spec = exp.worker_spec()
    assert spec.fitness == cfg.fitness and spec.seed == cfg.seed and spec.split == "search"
    assert spec.tokenizer_model == exp.base  # the base's tokenizer scores merged candidates
    assert spec.shared_models == (exp.base, *exp.models)  # resolved folders, base first
    assert (spec.stats_cache, spec.threads, spec.device) == (0.5, 1, "cpu")
    assert exp.worker_spec("validation").split == "validation"
    shipped = pickle.dumps(SpecWorkerFactory(spec, exp.resolver))
    assert b"ExperimentConfig" not in shipped and b"budget" not in shipped
