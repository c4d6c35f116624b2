"""Racing merges a candidate once per stay on a worker, not once per slice: real zoo experts
(lm-skills), real merges counted by the materializer's own tally, a real racing search and its
SQLite store. The skip never scores stale weights: a gradient job's weight load, a job of
another candidate (the validation re-scoring of an archive member) or a wants job in between
makes the next slice merge again."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.config import load_experiment
from evomerge.fitness import build_fitness
from evomerge.fitness.items import ItemPool
from evomerge.fitness.proxy_loss import ProxySpec
from evomerge.racing import Racer
from evomerge.recipe import Recipe
from evomerge.search_cli import search
from evomerge.workers.gradient import GradientRequest
from evomerge.workers.job import run_job, run_wants_job
from evomerge.workers.materialize import TALLY, Materializer
from evomerge.workers.ray_evaluator import pick_ticket
from tests.test_racing import CMA, RACE, RANDOM, _experiment, _snapshot

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from evomerge.build import build_evaluator
    from evomerge.experiment import resolve_models

    tmp = tmp_path_factory.mktemp("resident")
    cfg = load_experiment(_experiment(tmp, racing=RACE, driver=RANDOM, budget="{max_evals: 6}"))
    models, base = resolve_models(cfg)

    def scaled(path: str, w: float) -> Recipe:
        return Recipe.from_dict(
            {
                "merge_method": "linear",
                "models": [{"model": path, "parameters": {"weight": w}}],
                "parameters": {"normalize": False},
            }
        )

    # the experts and the base, and two broken ones (weights shrunk): dropped after a slice
    paths = [*models, base]
    recipes = [scaled(p, 1.0) for p in paths] + [scaled(paths[0], 0.05), scaled(paths[1], 0.05)]
    evaluator = build_evaluator(cfg, tmp)
    yield cfg, recipes, evaluator
    evaluator.close()


def _runs(digests: list[str]) -> int:
    """Stays: maximal runs of consecutive jobs of one candidate on the (one) serial worker."""
    return sum(1 for i, d in enumerate(digests) if i == 0 or d != digests[i - 1])


def _race(cfg, recipes, evaluator, monkeypatch, *, resident: bool):
    monkeypatch.setattr(Materializer, "reuse_resident", resident)
    monkeypatch.setattr(Racer, "resident_order", resident)
    fitness = build_fitness(cfg.fitness)
    pool = ItemPool.build(fitness, cfg.seed)
    jobs: list[str] = []
    evaluator.on_result = lambda r: jobs.append(r.digest)  # the evaluator's own hook
    evaluator.context.forget_resident()
    merges = TALLY.merges
    try:
        out = Racer(cfg.fitness.racing, pool, fitness, need=1, places=1).race(
            evaluator, recipes, []
        )
    finally:
        evaluator.on_result = None
    return out, jobs, TALLY.merges - merges


def test_a_candidate_is_merged_once_per_stay_not_once_per_slice(setup, monkeypatch):
    cfg, recipes, evaluator = setup
    before, old_jobs, old_merges = _race(cfg, recipes, evaluator, monkeypatch, resident=False)
    after, jobs, merges = _race(cfg, recipes, evaluator, monkeypatch, resident=True)
    assert old_merges == len(old_jobs)  # before: every slice merged its candidate
    assert len(jobs) == len(old_jobs) > len(recipes)  # several rounds: the same slices
    assert merges == _runs(jobs) < len(jobs)  # now: once per stay on the worker
    # the round order: each round starts with the candidate the last one ended with
    assert _runs(old_jobs) == len(old_jobs)
    # nothing changed: the same items per candidate, the same values, byte for byte
    assert after.items == before.items
    for a, b in zip(after.results, before.results, strict=True):
        assert (a.digest, a.status, a.fitness, a.objectives, a.result) == (
            b.digest,
            b.status,
            b.fitness,
            b.objectives,
            b.result,
        )


def test_anything_else_written_into_the_model_makes_the_next_slice_merge(setup):
    from evomerge.workers.gradient_job import _load

    cfg, recipes, evaluator = setup
    ctx = evaluator.context
    pool = ItemPool.build(build_fitness(cfg.fitness), cfg.seed)
    first, second = pool.positions(0, 8), pool.positions(8, 16)
    a, other = recipes[0], recipes[1]

    def slice_of(recipe, items):
        merges = TALLY.merges
        result = run_job(ctx, recipe, timeout_s=None, items=items)
        assert result.ok, result.error
        return result, TALLY.merges - merges

    ctx.forget_resident()
    fresh, n = slice_of(a, second)  # a's second slice, scored right after a merge
    assert n == 1
    assert slice_of(a, second)[1] == 0  # resident: no merge, the same values
    # a gradient job loads its theta with the gradient job's own loader: here, into the
    # resident model (a theta of 0.01 everywhere)
    model = ctx.materializer.model
    theta = {n: torch.full_like(p, 0.01) for n, p in model.named_parameters()}
    _load(model, theta)
    again, n = slice_of(a, second)
    assert n == 1 and again.result == fresh.result  # merged again: not the stale weights
    # another candidate's job in between (the validation re-scoring of an archive member)
    slice_of(other, first)
    assert slice_of(a, second)[1] == 1
    # a gradient job on this worker in between (it fails here: a racing worker holds no
    # fw_pool space; racing refuses the gradient drivers, so the two never share a worker)
    request = GradientRequest(0, np.zeros(1), ProxySpec.parse({"kind": "digits"}))
    wanted = run_wants_job(ctx, a, {"gradient": request}, timeout_s=None)
    assert not wanted.ok and "fw_pool" in wanted.error
    assert slice_of(a, second)[1] == 1
    assert slice_of(a, first)[1] == 0  # another slice of the resident candidate
    # an in-place write that leaves the storage in place is seen by the version counter
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    assert not ctx.materializer.holds(a.digest())
    back, n = slice_of(a, second)
    assert n == 1 and back.result == fresh.result


def test_racing_search_store_is_byte_identical_with_and_without_the_skip(
    tmp_path, capsys, monkeypatch
):
    exp = _experiment(tmp_path, racing=RACE, driver=CMA, budget="{max_evals: 12}")
    counts = {}
    for resident in (False, True):
        monkeypatch.setattr(Materializer, "reuse_resident", resident)
        monkeypatch.setattr(Racer, "resident_order", resident)
        merges = TALLY.merges
        assert search(exp, tmp_path / f"run{int(resident)}") == 0
        counts[resident] = TALLY.merges - merges
    capsys.readouterr()
    # candidates, per-item values, archive, winner, checkpoints: byte for byte
    assert _snapshot(tmp_path / "run0") == _snapshot(tmp_path / "run1")
    assert counts[True] < counts[False], counts


def test_a_free_ray_worker_takes_its_resident_candidate_and_leaves_the_others():
    assert pick_ticket(["a", "b", "c"], "c", {"a"}) == 2  # its own first
    assert pick_ticket(["a", "b", "c"], "x", {"a"}) == 1  # not another worker's resident
    assert pick_ticket([None, "a"], "a", set()) == 1
    assert pick_ticket(["a", "a"], None, {"a"}) == 0  # only others' residents: take the first
    assert pick_ticket([None, "b"], None, {"b"}) == 0  # a wants job is nobody's
    assert pick_ticket(["a", "b"], "c", set(), own_only=True) is None
