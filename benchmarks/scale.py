"""Scale-out figures of the Ray evaluator on this machine (not a test; prints a table).

  python benchmarks/scale.py [--candidates 16] [--repeats 3] [--hidden 256] [--layers 4]

1. Candidates per minute with 1 and 2 local Ray workers (``--workers N``: an embedded cluster on
   loopback), and the serial evaluator for reference.
2. Per-candidate overhead of the Ray path against the serial one (1 worker vs in-process).
3. Memory per worker with the experts shared through the node's object store against per-worker
   copies, for 1 and 2 workers: RSS, PSS (shared pages split between the processes mapping them)
   and private bytes. With the shared cache a worker's private memory does not contain the
   experts, so the node's total grows by the model and activations per worker, not by the experts.

The workload is a real one in miniature: Llama-shaped experts (safetensors on disk), each
candidate a linear merge materialized in place into a resident model, scored by the model's
log-likelihood of a token sequence. Timings are medians over ``--repeats`` rounds; on a shared
2-core machine they are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from evomerge.fitness.result import EvalResult, TaskScore  # noqa: E402
from evomerge.recipe import ModelRef, Recipe  # noqa: E402
from evomerge.workers.materialize import ExpertCache  # noqa: E402
from evomerge.workers.ray_actor import WorkerFactory  # noqa: E402
from evomerge.workers.ray_placement import PlacedMaterializer, Placement  # noqa: E402
from evomerge.workers.serial import SerialEvaluator  # noqa: E402

MB = 2**20


def make_experts(root: Path, n: int, hidden: int, layers: int) -> list[str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    out = []
    for i in range(n):
        torch.manual_seed(i)
        # bf16 on disk, like real checkpoints: the cache computes in float32, so a worker's own
        # cache is a private float32 copy (heap), the shared one a single copy per node.
        LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(root / f"e{i}"))
        out.append(str(root / f"e{i}"))
    return out


def linear_merge(recipe, cache):
    from transformers import AutoConfig

    first = recipe.models[0].model
    weights = [(m.model, float(m.parameters["weight"])) for m in recipe.models]
    tensors = ((n, sum(w * cache.tensor(r, n) for r, w in weights)) for n in cache.names(first))
    return AutoConfig.from_pretrained(first), tensors


class Likelihood:
    ids = torch.arange(1, 65).remainder(250).unsqueeze(0)

    def __init__(self, cache, placement, worker):
        torch.set_num_threads(1)
        self.worker, self.seed, self.tokenizer = worker, 0, None
        self.materializer = PlacedMaterializer(cache, placement, merge_fn=linear_merge)

    def materialize(self, recipe):
        return self.materializer.materialize(recipe)

    def score(self, model, tokenizer):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=self.ids).logits[0, :-1], -1)
        vals = logp.gather(1, self.ids[0, 1:, None])[:, 0].tolist()
        res = EvalResult(tasks={"lik": TaskScore.from_examples(vals)})
        return res, res.aggregate(), ()


class Factory(WorkerFactory):
    def __init__(self, models, shared=True):
        self.models, self.shared, self.resolver = models, shared, None

    def shared_models(self):
        return list(self.models) if self.shared else []  # [] -> each worker reads its own copy

    def build(self, cache, placement, worker):
        if not self.shared:
            for m in self.models:
                cache.tensors(m)  # load now, as a worker with a private cache would
        return Likelihood(cache, placement, worker)


def recipes(models, n, offset=0):
    return [
        Recipe(
            merge_method="linear",
            seed=offset + i,
            models=[
                ModelRef(model=models[0], parameters={"weight": 0.5 + 0.01 * i}),
                ModelRef(model=models[1], parameters={"weight": 0.5 - 0.01 * i}),
            ],
        )
        for i in range(n)
    ]


def timed_rounds(ev, models, n, repeats) -> list[float]:
    ev.evaluate(recipes(models, 2, offset=10_000))  # warm-up: resident model built
    out = []
    for r in range(repeats):
        t0 = time.perf_counter()
        res = ev.evaluate(recipes(models, n, offset=r * n))
        out.append(time.perf_counter() - t0)
        assert all(x.ok for x in res), res[0].error
    return out


def ray_round(models, workers, n, repeats, shared=True):
    from evomerge.workers.ray_evaluator import RayEvaluator

    t0 = time.perf_counter()
    ev = RayEvaluator(Factory(models, shared), num_workers=workers, object_store_memory=400 * MB)
    try:
        times = timed_rounds(ev, models, n, repeats)
        start = time.perf_counter() - t0
        info = ev.worker_info()
    finally:
        ev.close()
    return times, info, start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with tempfile.TemporaryDirectory() as tmp:
        models = make_experts(Path(tmp), 2, a.hidden, a.layers)
        expert_mb = (
            sum(t.numel() * 4 for m in models for t in ExpertCache().tensors(m).values()) / MB
        )
        print(
            f"experts: 2 x {expert_mb / 2:.1f} MB (float32); {a.candidates} candidates/round, "
            f"{a.repeats} rounds, median"
        )
        torch.set_num_threads(1)
        serial_ctx = Likelihood(ExpertCache(), Placement(), "serial")
        with SerialEvaluator(serial_ctx) as ev:
            serial = timed_rounds(ev, models, a.candidates, a.repeats)
        rows, mem = [], {}
        for w in (1, 2):
            times, info, start = ray_round(models, w, a.candidates, a.repeats)
            rows.append((f"ray, {w} worker{'s' * (w > 1)}", statistics.median(times), start))
            mem[("shared", w)] = info
        with SerialEvaluator(serial_ctx) as ev:  # again, after: the machine's load drifts
            serial += timed_rounds(ev, models, a.candidates, a.repeats)
        rows.insert(0, ("serial (in process)", statistics.median(serial), None))
        for w in (1, 2):
            mem[("copies", w)] = ray_round(models, w, 2, 1, shared=False)[1]
    report(rows, mem, a.candidates, expert_mb)


def report(rows, mem, n, expert_mb) -> None:
    print(f"\n{'evaluator':<22}{'cand/min':>10}{'s/cand':>9}{'start s':>9}")
    for name, t, start in rows:
        s = "" if start is None else f"{start - t:9.1f}"
        print(f"{name:<22}{60 * n / t:>10.1f}{t / n:>9.3f}{s}")
    serial, one, two = (r[1] / n for r in rows)
    print(
        f"\nRay overhead per candidate (1 worker vs serial): {1000 * (one - serial):+.1f} ms "
        f"({100 * (one / serial - 1):+.0f}%)"
    )
    print(f"speed-up 2 workers vs 1: {one / two:.2f}x")
    print(
        f"\n{'memory per worker (MB)':<22}{'workers':>8}{'rss':>7}{'pss':>7}{'anon':>7}"
        f"{'shmem':>7}{'node: anon + experts':>22}"
    )
    for (kind, w), infos in sorted(mem.items()):

        def avg(key: str, infos=infos) -> float:
            return statistics.mean(i.get(key, 0) for i in infos) / MB

        # the node's memory for these workers: their private heap pages, plus the one expert
        # copy in the object store when shared
        total = sum(i.get("anon_bytes", 0) for i in infos) / MB
        total += expert_mb if kind == "shared" else 0
        print(
            f"{kind + ' cache':<22}{w:>8}{avg('rss_bytes'):>7.0f}{avg('pss_bytes'):>7.0f}"
            f"{avg('anon_bytes'):>7.0f}{avg('shmem_bytes'):>7.0f}{total:>22.0f}"
        )
    print(
        f"(experts: {expert_mb:.0f} MB as float32; anon = private heap, shmem = pages mapped "
        "from the node's object store)"
    )


if __name__ == "__main__":
    main()
