"""Exact resume of a Frank-Wolfe search after SIGKILL, end to end through the CLI.

Frank-Wolfe's state is more than a candidate list: the iterate θ_t (its coefficients), the step
count and the gradient jobs' results. A search over a small LM pool is run once uninterrupted,
and once killed with SIGKILL at random moments and resumed each time; candidates, scores,
archive and archived bytes must be identical.
"""

from __future__ import annotations

import random
import subprocess

import pytest

from tests.test_resume import ENV, _cli, _snapshot, kill_and_resume_to_the_end

pytestmark = pytest.mark.timeout(600)

YAML = """
name: fw_resume
models: [{members}]
base_model: {base}
space: {{kind: fw_pool, granularity: task, iterations: 5}}
fitness:
  tasks: [{{kind: python, name: d, function: {fn}:dictionary_fitness}}]
driver: {{name: frank_wolfe, options: {{proxy: {{kind: lm, data: {proxy}, n: 12}}}}}}
budget: {{max_evals: 20}}
archive: {{top_k: 2}}
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    import evomerge.zoo.lm_pool as lp

    root = tmp_path_factory.mktemp("fwresume")
    pool = lp.build_lm_pool(
        root / "pool", n_irrelevant=1, per_expert=4, base_steps=6, expert_steps=6
    )
    members = ", ".join([*pool.relevant, *pool.irrelevant])
    text = YAML.format(members=members, base=pool.base, fn=lp.__file__, proxy=pool.proxy)
    (root / "exp.yaml").write_text(text)
    return root / "exp.yaml"


def test_frank_wolfe_killed_and_resumed_equals_uninterrupted(tmp_path, experiment):
    full = tmp_path / "full"
    done = subprocess.run(
        _cli("search", str(experiment), "--run-dir", str(full)),
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    kill_and_resume_to_the_end(experiment, killed, random.Random(7))

    a, b = _snapshot(full), _snapshot(killed)
    assert len(a[0]) == 6  # θ_0 .. θ_5
    assert a[0] == b[0]  # candidates, genes, digests, statuses, scores
    assert a[1] == b[1] and a[1]  # archive table
    assert a[2] == b[2] and a[2]  # archived model bytes
