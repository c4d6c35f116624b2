"""The recipes the FW pool space decodes mean, through evomerge's merge engine (mergekit
semantics), exactly the weights the streamed FW job builds: task arithmetic with per-tensor
weights, and the chain of TIES steps resolved through ``recipe:<digest>`` links."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from evomerge.io.lazy_checkpoint import Meter
from evomerge.merge.engine import run_merge
from evomerge.spaces.fw_pool import FWPoolSpace
from evomerge.workers.pool_weights import build_theta
from evomerge.zoo.digits_pool import build_digits_pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return build_digits_pool(tmp_path_factory.mktemp("fweng"), n_irrelevant=2, hidden=32, epochs=2)


def _close(space, x, folder):
    theta = build_theta(space, x, space.resolve, Meter())
    merged = load_file(str(folder / "model.safetensors"))
    return max(float((merged[n] - theta[n]).abs().max()) for n in space.tensors)


def test_task_arithmetic_recipe_matches_build_theta(tmp_path, pool):
    space = FWPoolSpace(pool.base, [*pool.relevant, *pool.irrelevant])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, space.dim) * (rng.uniform(size=space.dim) > 0.5)
    run_merge(space.decode(x), tmp_path / "ta")
    assert _close(space, x, tmp_path / "ta") < 1e-6


def test_ties_chain_matches_replay(tmp_path, pool):
    space = FWPoolSpace(
        pool.base,
        [*pool.relevant, *pool.irrelevant],
        variant="ties",
        iterations=3,
        init="task_arithmetic",
    )
    w, hist = space.split(space.x0())
    hist[0] = [0.9, 0, 1, 2, 3]
    hist[1] = [0.6, 4, -1, 1, 1]
    hist[2] = [0.45, 2, 2, 5, -1]
    x = np.concatenate([w.reshape(-1), hist.reshape(-1)])
    recipe = space.decode(x)

    def resolve(ref: str) -> str:
        if not ref.startswith("recipe:"):
            return ref
        digest = ref.split(":", 1)[1]
        out = tmp_path / digest
        if not out.exists():
            run_merge(space.links[digest], out, resolver=resolve)
        return str(out)

    run_merge(recipe, tmp_path / "final", resolver=resolve)
    assert len(space.links) == 3  # theta_0 and two intermediate steps
    assert _close(space, x, tmp_path / "final") < 1e-6
