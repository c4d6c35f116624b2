"""RayEvaluator on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``:
two raylets, each with its own object store and resources, all on loopback).

Workers hold a tiny real Llama resident and materialize each candidate in place (a linear
merge of the experts read from the node's shared cache); the fitness is the model's mean
log-likelihood of a fixed token sequence. The same worker context run in-process through the
SerialEvaluator is the reference every Ray result must equal."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest
import torch

from evomerge.fitness.result import EvalResult, TaskScore
from evomerge.recipe import ModelRef, Recipe
from evomerge.workers.materialize import ExpertCache
from evomerge.workers.ray_actor import WorkerFactory
from evomerge.workers.ray_placement import PlacedMaterializer, Placement
from evomerge.workers.serial import SerialEvaluator
from tests.helpers.kill_resume import committed_generation

ray = pytest.importorskip("ray")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors need this module's classes

IDS = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4, 8, 6, 10, 12]])


def tiny_llama(path: Path, seed: int, layers: int = 2) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=16,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return str(path)


def linear_merge(recipe: Recipe, cache: ExpertCache):
    """A real linear merge over the cached experts (the engine's job in a search)."""
    from transformers import AutoConfig

    first = recipe.models[0].model
    names = cache.names(first)
    weights = [(m.model, float(m.parameters["weight"])) for m in recipe.models]
    tensors = ((n, sum(w * cache.tensor(ref, n) for ref, w in weights)) for n in names)
    return AutoConfig.from_pretrained(cache.resolver(first)), tensors


class LikelihoodContext:
    """Recipe seed 1 makes the job slow (0.5 s), a first weight >= 0.95 makes it hang in a way
    SIGALRM cannot stop (signals blocked): knobs for the fault tests."""

    def __init__(self, cache, placement: Placement, worker: str) -> None:
        torch.set_num_threads(1)  # same arithmetic in every process (Ray workers use 1 thread)
        self.worker, self.seed, self.tokenizer = worker, 0, None
        self.cache = cache
        self.materializer = PlacedMaterializer(cache, placement, merge_fn=linear_merge)
        torch.zeros(1, device=placement.device)  # a GPU worker without CUDA fails here

    def materialize(self, recipe: Recipe):
        if recipe.models[0].parameters["weight"] >= 0.95:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(600)
        if recipe.seed == 1:
            time.sleep(0.5)
        return self.materializer.materialize(recipe)

    def score(self, model, tokenizer):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=IDS).logits[0, :-1].float(), -1)
        per_token = logp.gather(1, IDS[0, 1:, None])[:, 0].tolist()
        result = EvalResult(tasks={"lik": TaskScore.from_examples(per_token, "logp")})
        return result, result.aggregate(), ()


class LikelihoodFactory(WorkerFactory):
    def __init__(self, models: list[str]) -> None:
        self.models, self.resolver = models, None

    def shared_models(self) -> list[str]:
        return list(self.models)

    def build(self, cache, placement, worker):
        return LikelihoodContext(cache, placement, worker)


@pytest.fixture(scope="module")
def cluster():
    from evomerge.workers.ray_cluster import local_cluster

    c = local_cluster(
        [{"num_cpus": 1}, {"num_cpus": 1, "num_gpus": 2}],
        object_store_memory=120 * 2**20,
    )
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return [tiny_llama(root / name, seed) for seed, name in enumerate(["a", "b"])]


@pytest.fixture(scope="class")
def evaluator(cluster, experts):
    """One evaluator for the class (worker start-up costs seconds): a worker on each raylet."""
    from evomerge.workers.ray_evaluator import RayEvaluator

    ev = RayEvaluator(LikelihoodFactory(experts), address=cluster.address, num_workers=2)
    yield ev
    ev.close()


def recipes(models, n=8, seed=0):
    return [
        Recipe(
            merge_method="linear",
            seed=seed,
            models=[
                ModelRef(model=models[0], parameters={"weight": round(0.1 * i, 2)}),
                ModelRef(model=models[1], parameters={"weight": round(1 - 0.1 * i, 2)}),
            ],
        )
        for i in range(n)
    ]


def serial_reference(rs):
    ctx = LikelihoodContext(ExpertCache(), Placement(), "serial")
    with SerialEvaluator(ctx) as ev:
        return ev.evaluate(rs)


class TestOneEvaluator:
    """Two workers, one per raylet, shared by these tests; closed before the next ones."""

    def test_results_in_order_equal_serial_and_cache_is_shared(self, evaluator, experts):
        rs = recipes(experts)
        before = dict(evaluator.stats.per_worker)
        evaluator.worker_info()  # both warmed up (queued behind warmup): neither is left out
        got = evaluator.evaluate(rs)
        info = evaluator.worker_info()
        # 1 CPU reserved per worker: 1 torch thread, 1 interop thread (workers/threads.py)
        assert {(i["torch_threads"], i["interop_threads"]) for i in info} == {(1, 1)}
        want = serial_reference(rs)
        assert [r.digest for r in got] == [r.digest() for r in rs]
        assert all(r.ok for r in got), [r.error for r in got]
        assert [r.fitness for r in got] == pytest.approx([r.fitness for r in want], rel=1e-6)
        assert len({i["node_id"] for i in info}) == 2  # SPREAD put one worker on each raylet
        assert all(i["built"] and i["shared_bytes"] > 0 for i in info)
        used = {w for w, n in evaluator.stats.per_worker.items() if n > before.get(w, 0)}
        assert len(used) >= 2  # candidates really went to several workers

    def test_a_free_worker_takes_the_candidate_it_holds(self, evaluator, experts):
        # racing submits a round, then the survivors again: the candidate a worker ran last
        # (resident there) goes back to that worker (no merge), even when it comes last in the
        # batch (the batch is queued whole before any free worker picks)
        rs = recipes(experts, 4, seed=2)
        first = evaluator.evaluate(rs)
        last = {r.worker: r.digest for r in first}  # (results in ticket order)
        assert len(last) == 2, last
        resident = set(last.values())
        again_rs = [r for r in rs if r.digest() not in resident]
        again_rs += [r for r in rs if r.digest() in resident]
        again = evaluator.evaluate(again_rs)
        ran = {r.digest: r.worker for r in again}
        assert all(ran[d] == w for w, d in last.items()), (last, ran)
        by_digest = {r.digest: r.fitness for r in first}
        assert [r.fitness for r in again] == [by_digest[r.digest()] for r in again_rs]

    def test_killed_worker_requeues_its_candidate(self, evaluator, experts):
        rs = recipes(experts, 10, seed=1)  # 0.5 s each: a kill lands while one runs
        killed: list[int] = []
        deaths0, requeued0, done0 = (
            evaluator.stats.worker_deaths,
            evaluator.stats.requeued,
            evaluator.stats.completed,
        )

        def kill_one_busy_worker(result) -> None:
            running = evaluator.running()
            if killed or not running:
                return
            pid = evaluator.worker_pids()[next(iter(running))]
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

        evaluator.on_result = kill_one_busy_worker
        try:
            got = evaluator.evaluate(rs)
        finally:
            evaluator.on_result = None
        stats = evaluator.stats
        assert killed and stats.worker_deaths > deaths0 and stats.requeued > requeued0
        assert stats.completed - done0 == len(rs)  # every ticket answered exactly once
        assert all(r.ok for r in got), [r.error for r in got]
        want = serial_reference(rs)
        assert [r.fitness for r in got] == pytest.approx([r.fitness for r in want], rel=1e-6)
        pids = {i["pid"] for i in evaluator.worker_info()}
        assert len(pids) == 2 and killed[0] not in pids  # the killed worker restarted

    def test_hung_candidate_is_killed_and_recorded_fail(self, evaluator, experts):
        rs = recipes(experts, 3)
        hung = Recipe(
            merge_method="linear",
            models=[
                ModelRef(model=experts[0], parameters={"weight": 0.97}),
                ModelRef(model=experts[1], parameters={"weight": 0.03}),
            ],
        )
        evaluator.evaluate(rs)  # every worker has built its resident model
        t0, hard0 = time.monotonic(), evaluator.stats.hard_timeouts
        # 20 s: far below the hang's 600 s, and far above a normal candidate (0.1-0.5 s) even
        # when the other test process loads the 2 cores: at 8 s a normal one once timed out in CI.
        evaluator.timeout_s, evaluator.grace_s = 20.0, 2.0
        try:
            got = evaluator.evaluate([rs[0], hung, rs[1], rs[2]])
        finally:
            evaluator.timeout_s = None
        assert time.monotonic() - t0 < 90
        assert [r.ok for r in got] == [True, False, True, True], [r.error for r in got]
        assert "timed out" in got[1].error and "killed" in got[1].error
        assert evaluator.stats.hard_timeouts == hard0 + 1
        after = evaluator.evaluate(rs)  # the killed worker comes back and scores again
        assert [r.fitness for r in after] == [r.fitness for r in got[:1] + got[2:]]


def test_gpu_worker_is_placed_up_to_cuda(cluster, experts):
    """Two (declared) GPUs per candidate: Ray gives the actor both, the worker plans a split
    bf16 placement over cuda:0/cuda:1, and the first CUDA call fails cleanly as data here."""
    from evomerge.workers.ray_evaluator import RayEvaluator

    with RayEvaluator(
        LikelihoodFactory(experts),
        address=cluster.address,
        num_workers=1,
        num_gpus_per_worker=2,
        num_cpus_per_worker=0,
    ) as ev:
        got = ev.evaluate(recipes(experts, 2))
        (info,) = ev.worker_info()
    assert sorted(info["gpu_ids"]) == ["0", "1"]
    assert info["cuda_visible_devices"] in ("0,1", "1,0")
    assert info["placement"] == {"devices": ["cuda:0", "cuda:1"], "dtype": "bfloat16"}
    assert not Path(info["scratch"]).exists()  # scratch removed on close
    if not torch.cuda.is_available():
        assert all(not r.ok for r in got)
        assert all("setup failed" in r.error and "CUDA" in r.error for r in got), got[0].error


def test_split_placement_runs_the_same_forward_on_cpu(experts):
    """The device-map path with both 'devices' on the CPU: hooks and dtype, no CUDA needed."""
    from evomerge.workers.ray_placement import plan_device_map

    assert plan_device_map(4, ("cuda:0", "cuda:1"))["model.layers.1"] == "cuda:0"
    assert plan_device_map(4, ("cuda:0", "cuda:1"))["model.layers.2"] == "cuda:1"
    r = recipes(experts, 4)[3]
    flat = LikelihoodContext(ExpertCache(), Placement(("cpu",), "float32"), "a")
    split = LikelihoodContext(ExpertCache(), Placement(("cpu", "cpu"), "float32"), "b")
    a = flat.score(flat.materialize(r), None)[1]
    b = split.score(split.materialize(r), None)[1]
    assert split.materializer.device_map()["lm_head"] == "cpu"
    assert a == b and math.isfinite(a)
    half = LikelihoodContext(ExpertCache(), Placement(("cpu", "cpu"), "bfloat16"), "c")
    model = half.materialize(r)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert abs(half.score(model, None)[1] - a) < 0.05


# ---- a whole search through --ray-address ----------------------------------------------------
SLOW_SCORE = """\
import time

import torch

IDS = torch.arange(1, 17).remainder(60).unsqueeze(0)


def score(model, tokenizer):
    time.sleep(0.3)  # long enough for the test to kill a worker in the middle of a candidate
    with torch.no_grad():
        logits = model(input_ids=IDS).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, IDS[:, 1:, None])
    return float(logp.mean())
"""


def _kill_a_busy_worker_once(run_dir: Path, done: threading.Event, killed: list) -> None:
    """After the first committed generation, SIGKILL one Ray worker process while it runs a
    candidate (its process title is ray::EvalWorker.run while it does)."""
    import psutil

    me = psutil.Process()
    while not done.is_set() and not killed:
        if committed_generation(run_dir) >= 0:
            for p in me.children(recursive=True):
                try:
                    title = " ".join(p.cmdline())
                except psutil.Error:
                    continue
                if title.startswith("ray::EvalWorker.run"):
                    p.kill()
                    killed.append(p.pid)
                    return
        time.sleep(0.05)


def _trials(run_dir: Path):
    from evomerge.store import RunStore

    with RunStore.open(run_dir, readonly=True) as st:
        trials = [(t.idx, t.digest, t.status, t.fitness, t.reused_from) for t in st.trials()]
        return trials, [(e.rank, e.digest, e.idx) for e in st.archive()]


def test_search_through_ray_address_survives_a_killed_worker(cluster, tmp_path):
    """`evomerge search --ray-address` on the 2-raylet cluster, a worker SIGKILLed mid-run: no
    candidate lost or scored twice, and the archive equals the serial run with the same seed."""
    from evomerge import search_cli
    from tests.helpers.search_fixtures import make_family, write_experiment

    fam = make_family(tmp_path / "models", n_experts=2, layers=2, hidden=16)
    exp = write_experiment(tmp_path, fam, max_evals=12, popsize=4)
    (tmp_path / "score.py").write_text(SLOW_SCORE)
    # the serial run does the same arithmetic as the 1-CPU Ray workers: one thread each
    exp.write_text(exp.read_text().replace("timeout_s: 60}", "timeout_s: 60, threads: 1}"))
    threads = torch.get_num_threads()
    try:
        assert search_cli.search(exp, tmp_path / "serial", workers=1) == 0
        done, killed = threading.Event(), []
        watcher = threading.Thread(
            target=_kill_a_busy_worker_once, args=(tmp_path / "ray", done, killed), daemon=True
        )
        watcher.start()
        try:
            rc = search_cli.search(exp, tmp_path / "ray", workers=2, ray_address=cluster.address)
        finally:
            done.set()
            watcher.join()
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    assert killed, "the watcher found no busy worker to kill"
    serial, ray_run = _trials(tmp_path / "serial"), _trials(tmp_path / "ray")
    assert [t[:3] for t in ray_run[0]] == [t[:3] for t in serial[0]]  # same candidates, all OK
    assert all(t[2] == "OK" for t in ray_run[0])
    assert [t[3] for t in ray_run[0]] == pytest.approx([t[3] for t in serial[0]], rel=1e-6)
    assert ray_run[1] == serial[1]  # the archive
