"""The premise of benchmarks/vs_mergekit_evolve.py: for one candidate, mergekit-evolve's own
evaluator and evomerge's fitness give the same score.

One mergekit-evolve genotype (TIES over the lm-skills zoo's four experts, two layer groups) is
merged and scored by mergekit-evolve's code (``mergekit.evo.helpers.merge_model`` then
``evaluate_model``: a folder on disk, a fresh lm-eval ``huggingface`` model, the folder deleted),
in a subprocess set up as the benchmark's launcher sets up a Ray worker. evomerge then scores,
with its lm-eval fitness in process: a copy of that folder, and the same merge materialized in
place from the mergekit config the genome wrote (``from_mergekit_yaml``). All three scores must
be equal, and strictly between 0 and 1 (items right and wrong).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evomerge.config import resolve_model_ref
from evomerge.fitness import build_fitness, parse_fitness_config

pytest.importorskip("mergekit")  # the dev extra: mergekit 0.1.5 (its evolve code included)
pytest.importorskip("ray")  # mergekit.evo imports Ray and lm-eval

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from mergekit_evolve_cpu import placeholder_vllm  # noqa: E402

TASKS = ("zoo_cipher", "zoo_shift_u", "zoo_sort_u", "zoo_reverse")
LIMIT = 12
# layer groups x models x 1 filter set x (weight, density), mergekit-evolve's genotype layout
GENOTYPE = [[0.3, 0.6], [0.2, 0.5], [0.4, 0.7], [0.1, 0.4]] + [[0.2, 0.8], [0.3, 0.5]] * 2

MERGEKIT_SIDE = """
import json, shutil, sys
from mergekit_evolve_cpu import _worker_setup
_worker_setup()
import lm_eval.tasks, numpy as np, yaml
from mergekit.evo.config import EvolMergeConfiguration
from mergekit.evo.genome import ModelGenome
from mergekit.evo.helpers import evaluate_model, merge_model
from mergekit.options import MergeOptions

cfg_path, genotype, storage, keep, *paths = sys.argv[1:]
cfg = EvolMergeConfiguration.model_validate(yaml.safe_load(open(cfg_path)))
genome = ModelGenome(cfg.genome)
x = np.array(json.loads(genotype), dtype=float).reshape(-1)
# mergekit-evolve's MergeOptions with --no-merge-cuda (scripts/evolve.py)
opts = MergeOptions(cuda=False, low_cpu_memory=False, out_shard_size=10**12, random_seed=0,
                    quiet=True, read_to_gpu=False, copy_tokenizer=True, safe_serialization=True)
folder = merge_model(x, genome, storage, opts)
shutil.copytree(folder, keep)  # evaluate_model deletes the folder it scored
res = evaluate_model(folder, cfg.tasks, num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                     vllm=False, batch_size=8, task_manager=lm_eval.tasks.TaskManager(
                         include_path=paths), apply_chat_template=False,
                     fewshot_as_multiturn=False)
print(json.dumps({"score": res["score"], "config": genome.genotype_merge_config(x).to_yaml()}))
"""


def evomerge_fitness():
    tasks = [
        {
            "kind": "lm_eval",
            "task": t,
            "include_path": [str(REPO / "fitness" / t)],
            "metric": "exact_match",
            "limit": LIMIT,
            "batch_size": 8,
        }
        for t in TASKS
    ]
    fitness = build_fitness(parse_fitness_config({"tasks": tasks}))
    return lambda model, tok: fitness.aggregate(fitness(model, tok))


@pytest.fixture(scope="module")
def mergekit_scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mkevolve")
    experts = [
        resolve_model_ref(f"zoo:lm-skills/{e}") for e in ("cipher", "shift", "sort", "reverse")
    ]
    genome = {
        "genome": {
            "models": experts,
            "base_model": resolve_model_ref("zoo:lm-skills/base"),
            "merge_method": "ties",  # deterministic: the in-place merge can be compared
            "layer_granularity": 2,
        },
        "tasks": [{"name": t, "weight": 0.25, "metric": "exact_match,none"} for t in TASKS],
        "limit": LIMIT,
        "apply_chat_template": False,
        "fewshot_as_multiturn": False,
    }
    (tmp / "genome.yml").write_text(yaml.safe_dump(genome))
    stub = placeholder_vllm(tmp / "stub")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(stub), str(REPO / "benchmarks"), str(REPO)]),
    }
    args = [str(tmp / "genome.yml"), json.dumps(GENOTYPE), str(tmp / "merged"), str(tmp / "kept")]
    args += [str(REPO / "fitness" / t) for t in TASKS]
    out = subprocess.run(
        [sys.executable, "-c", MERGEKIT_SIDE, *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not any((tmp / "merged").iterdir())  # mergekit-evolve deleted its candidate
    return result, tmp / "kept"


def test_mergekit_evolve_evaluator_equals_evomerge_on_its_folder(mergekit_scored):
    from evomerge.eval_cli import load_model

    result, folder = mergekit_scored
    model, tok = load_model(folder, dtype="bfloat16")  # mergekit-evolve evaluates in bfloat16
    ours = evomerge_fitness()(model, tok)
    assert 0 < result["score"] < 1
    assert ours == pytest.approx(result["score"], abs=1e-12)


def test_mergekit_evolve_evaluator_equals_evomerge_in_place(mergekit_scored):
    import torch

    from evomerge.recipe_mergekit import from_mergekit_yaml
    from evomerge.workers.context import load_tokenizer
    from evomerge.workers.materialize import ExpertCache, Materializer

    result, folder = mergekit_scored
    recipe = from_mergekit_yaml(result["config"])
    assert recipe.merge_method == "ties" and recipe.dtype == "bfloat16"
    model = Materializer(ExpertCache(dtype=torch.bfloat16)).materialize(recipe)
    ours = evomerge_fitness()(model, load_tokenizer(str(folder)))
    assert ours == pytest.approx(result["score"], abs=1e-12)
