"""The per-candidate job: never raises; timeout, exception and NaN become FAIL; seeded RNG."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from evomerge.fitness.result import EvalResult, TaskScore
from evomerge.recipe import ModelRef, Recipe
from evomerge.workers.job import run_job
from evomerge.workers.serial import SerialEvaluator

RECIPE = Recipe(merge_method="linear", models=[ModelRef(model="a")])


class Ctx:
    worker = "w0"
    seed = 5
    tokenizer = None

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    def materialize(self, recipe):
        if self.behaviour == "raise":
            raise RuntimeError("CUDA out of memory (simulated by a bad recipe)")
        return torch.nn.Linear(2, 2)

    def score(self, model, tok):
        if self.behaviour == "slow":
            time.sleep(3)
        draw = float(torch.rand(()))  # reproducible: the job seeds torch from the digest
        value = math.nan if self.behaviour == "nan" else draw
        res = EvalResult({"t": TaskScore(value)})
        return res, value, (value,)


def test_ok_result_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    np.random.seed(9)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy())
    a = run_job(Ctx("ok"), RECIPE, timeout_s=10)
    b = run_job(Ctx("ok"), RECIPE, timeout_s=10)
    assert a.ok and a.fitness == b.fitness and a.worker == "w0"
    assert torch.equal(torch.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all()


def test_exception_timeout_and_nan_are_failures():
    err = run_job(Ctx("raise"), RECIPE, timeout_s=10)
    assert err.status == "FAIL" and "RuntimeError" in err.error and math.isnan(err.fitness)
    t0 = time.perf_counter()
    slow = run_job(Ctx("slow"), RECIPE, timeout_s=0.3)
    assert slow.status == "FAIL" and "timed out" in slow.error
    assert time.perf_counter() - t0 < 2
    nan = run_job(Ctx("nan"), RECIPE, timeout_s=10)
    assert nan.status == "FAIL" and "not finite" in nan.error and nan.result is not None


def test_serial_evaluator_keeps_order_and_builds_lazily():
    built = []

    def factory():
        built.append(1)
        return Ctx("ok")

    ev = SerialEvaluator(factory, timeout_s=5)
    assert not built
    recipes = [Recipe(merge_method="linear", models=[ModelRef(model=m)]) for m in "abc"]
    res = ev.evaluate(recipes)
    assert [r.digest for r in res] == [r.digest() for r in recipes] and len(built) == 1
    ev.close()
