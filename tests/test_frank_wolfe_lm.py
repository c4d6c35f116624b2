"""Frank-Wolfe on tiny Llamas built from an experiment file: the fw_pool space and the
frank_wolfe driver come out of the session builder, and the LM proxy gradient drives real steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evomerge.config import load_experiment
from evomerge.session import build_driver, build_space
from evomerge.workers.gradient_runner import run_frank_wolfe
from evomerge.zoo.lm_pool import build_lm_pool, lm_exact_match

YAML = """
name: fw_test
models: [{members}]
base_model: {base}
space: {{kind: fw_pool, granularity: task, iterations: 2}}
fitness:
  tasks: [{{kind: python, name: d, function: {fn}:dictionary_fitness}}]
driver: {{name: frank_wolfe, options: {{proxy: {{kind: lm, data: {proxy}, n: 12}}}}}}
budget: {{max_evals: 5}}
"""


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return build_lm_pool(
        tmp_path_factory.mktemp("lmpool"),
        n_irrelevant=1,
        per_expert=4,
        base_steps=6,
        expert_steps=6,
    )


def test_experiment_builds_fw_space_and_driver(tmp_path, pool):
    import evomerge.zoo.lm_pool as lp

    members = [*pool.relevant, *pool.irrelevant]
    text = YAML.format(members=", ".join(members), base=pool.base, fn=lp.__file__, proxy=pool.proxy)
    (tmp_path / "exp.yaml").write_text(text)
    cfg = load_experiment(tmp_path / "exp.yaml")
    space = build_space(cfg, tmp_path / "run")
    driver = build_driver(cfg, space)
    assert type(driver).__name__ == "FrankWolfe" and space.n_members == 5
    assert driver.params.iterations == 2 and driver.n_groups == 1
    steps = run_frank_wolfe(space, driver, lambda th: lm_exact_match(pool.base, th, pool.items))
    assert driver.stop() and len(steps) == 3
    assert all(math.isfinite(s.loss) for s in steps[:2]) and steps[0].peak_bytes > 0
    w = driver.state.w[0]
    assert w.sum() == pytest.approx(1.0) and np.count_nonzero(w) >= 1  # the first step has gamma 1
    recipe = space.decode(driver.best[0].x)
    assert recipe.merge_method == "task_arithmetic" and recipe.base_model == pool.base
