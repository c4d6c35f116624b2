"""A gradient is an evaluation result: Frank-Wolfe's gradient jobs run on the evaluator's workers
(Ray included), a failed one reaches the driver with its reason, and a candidate whose recipe
was scored before still gets its gradient computed."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import numpy as np
import pytest

from evomerge.archive import Archive
from evomerge.drivers.base import Candidate
from evomerge.drivers.frank_wolfe import FrankWolfe
from evomerge.fitness.proxy_loss import ProxySpec
from evomerge.loop import Budget, SearchLoop
from evomerge.rng_state import seed_globals
from evomerge.spaces.fw_pool import FWPoolSpace
from evomerge.store import RunStore
from evomerge.workers.gradient import GradientRequest
from evomerge.workers.serial import SerialEvaluator
from evomerge.workers.wants import tell_wanted
from evomerge.zoo.digits_pool import build_digits_pool
from tests.test_frank_wolfe_loop import DigitsContext
from tests.test_resume import ENV, _cli, _snapshot

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return build_digits_pool(
        tmp_path_factory.mktemp("gradjobs"), n_irrelevant=1, hidden=32, epochs=2
    )


def test_failed_gradient_reaches_the_driver_even_for_a_reused_recipe(tmp_path, pool):
    space = FWPoolSpace(pool.base, [*pool.relevant, *pool.irrelevant], granularity="task")
    broken = {"kind": "digits", "transform": "nope"}  # the worker's data loader raises
    store = RunStore.create(tmp_path, "{}", "h")
    seed_globals(0)
    driver = FrankWolfe.for_space(space, seed=0, proxy=broken, max_retries=1)
    loop = SearchLoop(
        store=store,
        space=space,
        driver=driver,
        evaluator=SerialEvaluator(DigitsContext(space)),
        archive=Archive(tmp_path, 1, None),
        budget=Budget(max_evals=10),
    )
    final = loop.run()
    assert final.stop_reason == "driver"
    assert driver.stop_reason.startswith("gradient failed 2 times: UserInputError")
    assert "digits transform 'nope' is unknown" in driver.stop_reason
    trials = store.trials()
    # the failed gradient kept theta: the second candidate is the same recipe, its score is
    # reused from the store, and its gradient was computed (and failed) all the same
    assert [t.reused_from for t in trials] == [None, 0] and trials[0].ok
    assert final.n_evals == 1


def test_a_worker_without_the_space_answers_a_failed_gradient(pool):
    space = FWPoolSpace(pool.base, list(pool.relevant), granularity="task")

    x = np.zeros(space.dim)
    recipe = space.decode(x)
    request = GradientRequest(0, x, ProxySpec.parse({"kind": "digits"}))
    cands = [Candidate(0, x, wants={"gradient": request}), Candidate(1, x)]
    ctx = DigitsContext(space)
    del ctx.space  # a worker that holds no pool space
    with SerialEvaluator(ctx) as ev:
        wanted = tell_wanted(ev, cands, [recipe, recipe])["wanted"]
    assert wanted[1] == {}  # a candidate that wants nothing gets nothing
    al = wanted[0]["gradient"]
    assert not al.ok and al.error.startswith("AttributeError")


YAML = """
name: fw_ray
models: [{members}]
base_model: {base}
space: {{kind: fw_pool, granularity: task, iterations: 3}}
fitness:
  tasks: [{{kind: python, name: d, function: {fn}:dictionary_fitness}}]
driver: {{name: frank_wolfe, options: {{proxy: {{kind: lm, data: {proxy}, n: 12}}}}}}
budget: {{max_evals: 20}}
archive: {{top_k: 2}}
evaluation: {{threads: 1}}
workers: {workers}
"""


def test_frank_wolfe_on_ray_workers_equals_serial(tmp_path):
    import evomerge.zoo.lm_pool as lp

    pool = lp.build_lm_pool(
        tmp_path / "pool", n_irrelevant=1, per_expert=4, base_steps=6, expert_steps=6
    )
    members = ", ".join([*pool.relevant, *pool.irrelevant])
    runs = {}
    for workers in (1, 2):
        text = YAML.format(
            members=members, base=pool.base, fn=lp.__file__, proxy=pool.proxy, workers=workers
        )
        exp = tmp_path / f"exp{workers}.yaml"
        exp.write_text(text)
        run_dir = tmp_path / f"run{workers}"
        done = subprocess.run(
            _cli("search", str(exp), "--run-dir", str(run_dir)),
            env=ENV,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        runs[workers] = run_dir
    serial, ray = _snapshot(runs[1]), _snapshot(runs[2])
    assert len(serial[0]) == 4  # theta_0 .. theta_3
    assert serial[0] == ray[0] and serial[1] == ray[1] and serial[2] == ray[2]
    with sqlite3.connect(f"file:{runs[2] / 'store.sqlite'}?mode=ro", uri=True) as conn:
        metas = [json.loads(m) for (m,) in conn.execute("SELECT meta_json FROM candidates")]
    # every step after the first was taken on a proxy loss the Ray workers computed
    losses = [m["loss"] for m in metas[1:]]
    assert all(isinstance(v, float) and np.isfinite(v) for v in losses), losses
