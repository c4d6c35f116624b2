"""The merge engine: plan a recipe, stream merged tensors, write a HF model folder.

``plan`` reads only headers; ``iter_merged_tensors`` computes one output tensor at a time
while a reader thread loads the next one's inputs (peak memory ≈ the float32 inputs of two
output tensors plus the operator's temporaries); ``run_merge`` hands each result to a writer
thread that puts it straight into pre-planned safetensors shards of a temporary folder, which
is renamed into place at the end. Pipelined or not (``pipeline=False``), the bytes are the same.
The workers call the same ``plan``/``iter_merged_tensors`` with their in-memory ExpertCache as
``source``, so an evaluated candidate and ``evomerge merge`` give the same bits.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import NonFiniteInput
from evomerge.merge.checks import check_finite
from evomerge.merge.ops import OPS, _fast, generator_for
from evomerge.merge.plan import MergePlan, TensorTask, plan
from evomerge.recipe import Recipe

__all__ = [
    "MergePlan",
    "MergeSummary",
    "TensorTask",
    "iter_merged_tensors",
    "merge_tensor",
    "plan",
    "run_merge",
]


@dataclass(frozen=True)
class MergeSummary:
    out_dir: Path
    n_tensors: int
    n_bytes: int
    n_layers: int
    shards: int
    seconds: float
    digest: str
    #: the model whose tokenizer files were copied; None when it had none (the CLI says so)
    tokenizer_from: str | None = None


Inputs = tuple[list[torch.Tensor], torch.Tensor | None]


def load_inputs(
    task: TensorTask, source: Any, *, device: str = "cpu", check: bool = True
) -> Inputs:
    """(tensors, base) of one output tensor, float32 on ``device``, each checked for NaN/Inf
    as stored (before the float32 copy: half the bytes for bf16). bfloat16 inputs that the fast
    path reads as stored (``_fast.reads_stored_bf16``: linear) stay so on CPU, and it checks
    them in its own read (``compute`` names the culprit)."""

    # the fast path widens bf16 itself; rows realigned to another vocabulary are float32 copies
    raw = device == "cpu" and _fast.reads_stored_bf16(task.op) and task.vocab is None

    def load(ref: str, name: str) -> torch.Tensor:
        stored = getattr(source, "stored", None)  # DiskSource: no float32 copy yet
        t = stored(ref, name) if stored is not None else source.tensor(ref, name)
        if raw and t.dtype == torch.bfloat16:
            return t
        if check:
            check_finite(t, ref, name)
        if t.is_floating_point() and t.dtype != torch.float32:
            t = t.float()
        return t.to(device) if device != "cpu" else t

    inputs = [load(r, n) for r, n in task.inputs], load(*task.base) if task.base else None
    if task.vocab is not None:  # one row per token of the merged vocabulary (evomerge.vocab)
        return task.vocab.align(task, *inputs)
    return inputs


def compute(
    task: TensorTask,
    inputs: Inputs,
    *,
    seed: int,
    out_dtype: torch.dtype | None = None,
    resident: Callable[[], Any] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the task's operator on its loaded inputs — the engine's one operator call site.

    The fast path (``evomerge.merge.ops._fast``) is asked first and gives the operator's bits when it
    answers; the result is float32, or ``out_dtype`` (the merged file's) where the fast path
    writes it directly. A search worker offers ``resident`` (a thunk giving its cached view of
    the tensor) and ``out`` (the resident parameter, which may then hold the result)."""
    tensors, base = inputs
    first = base if base is not None else tensors[0]
    if not first.is_floating_point():
        return first  # integer buffers are copied, not merged (as mergekit does)
    spec = OPS[task.op]
    fast = _fast.plan(
        task.op, tensors, base, task.params, resident=resident, out=out, out_dtype=out_dtype
    )
    try:
        if fast is not None:
            return fast(lambda: generator_for(seed, task.name))
        g = generator_for(seed, task.name) if spec.stochastic else None
        return spec.fn(tensors, base, generator=g, **task.params)
    except NonFiniteInput:
        _name_non_finite(task, inputs)
        raise


def _name_non_finite(task: TensorTask, inputs: Inputs) -> None:
    """Raise check_finite's UserInputError for the first input holding NaN/Inf."""
    tensors, base = inputs
    refs = list(task.inputs) + ([task.base] if task.base else [])
    for t, (ref, name) in zip(tensors + ([base] if base is not None else []), refs):
        check_finite(t, ref, name)


def merge_tensor(
    task: TensorTask,
    source: Any,
    *,
    seed: int,
    device: str = "cpu",
    check: bool = True,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One output tensor: read its inputs, run the operator (see ``compute`` for the dtype)."""
    inputs = load_inputs(task, source, device=device, check=check)
    return compute(task, inputs, seed=seed, out_dtype=out_dtype)


def iter_merged_tensors(
    plan: MergePlan,
    source: Any = None,
    *,
    device: str = "cpu",
    check: bool = True,
    prefetch: int = 1,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (output name, merged tensor) one at a time, in plan order: float32, or the
    plan's output dtype where the operator writes it directly.

    With ``prefetch`` > 0 a reader thread loads (maps, checks, converts) the inputs of the next
    ``prefetch`` tensors while this one is computed: torch releases the GIL, so reading and
    merging overlap. Peak memory grows by the inputs of ``prefetch`` tensors.
    """
    if source is None:
        from evomerge.io.folder import DiskSource

        source = DiskSource()
    seed = plan.recipe.seed
    tasks = plan.tasks
    if prefetch <= 0:
        with torch.no_grad():
            for task in tasks:
                out = merge_tensor(
                    task, source, seed=seed, device=device, check=check, out_dtype=plan.out_dtype
                )
                yield task.name, out
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="evomerge-read")
    try:
        pending = deque(
            pool.submit(load_inputs, t, source, device=device, check=check)
            for t in tasks[: prefetch + 1]
        )
        for i, task in enumerate(tasks):
            inputs = pending.popleft().result()
            if i + prefetch + 1 < len(tasks):
                nxt = tasks[i + prefetch + 1]
                pending.append(pool.submit(load_inputs, nxt, source, device=device, check=check))
            with torch.no_grad():
                out = compute(task, inputs, seed=seed, out_dtype=plan.out_dtype)
            del inputs
            yield task.name, out
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_merge(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resolver: Callable[[str], str] | None = None,
    source: Any = None,
    allow_pickle: bool = False,
    device: str = "cpu",
    max_shard_bytes: int | None = None,
    overwrite: bool = True,
    on_tensor: Callable[[str], None] | None = None,
    pipeline: bool = True,
) -> MergeSummary:
    """Merge ``recipe`` into a HF model folder ``out_dir`` (atomically). ``pipeline`` overlaps
    reading the next tensor's inputs and writing the previous output with each merge (the same
    bytes as ``pipeline=False``, which does one thing at a time)."""
    from evomerge.io.adapter_folder import open_model_folder
    from evomerge.io.folder import DiskSource
    from evomerge.io.writer import DEFAULT_SHARD_BYTES, prepare_out, write_model_folder

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    prepare_out(out_dir, overwrite)
    if source is None:
        source = DiskSource(resolver, allow_pickle=allow_pickle)
    p = plan(recipe, resolver=resolver, source=source)
    entries = [
        (t.name, t.shape, p.out_dtype if _is_float(source, t) else _dtype(source, t))
        for t in p.tasks
    ]
    digest = recipe.digest()
    # a temp folder only where a merged vocabulary needs one: a worker killed past its time
    # limit cannot remove it, and each killed merge used to leave an empty one in /tmp
    tok_dir = tempfile.TemporaryDirectory(prefix="evomerge-tok-") if p.vocab is not None else None
    with tok_dir or contextlib.nullcontext() as tok_tmp:
        if p.vocab is not None:  # the merged vocabulary's tokenizer, saved as mergekit does
            p.vocab.tokenizer.save_pretrained(tok_tmp)
            tok_files = sorted(Path(tok_tmp).iterdir())
        elif p.tokenizer_ref:
            tok_files = open_model_folder(source.folder(p.tokenizer_ref)).tokenizer_files()
        else:
            tok_files = []
        res = write_model_folder(
            out_dir,
            entries,
            iter_merged_tensors(p, source, device=device, prefetch=1 if pipeline else 0),
            config=p.config_dict,
            files=tok_files + _generation_config(source, p),
            texts={"recipe.yaml": recipe.to_yaml()},
            metadata={"evomerge_recipe_digest": digest},
            max_shard_bytes=max_shard_bytes or DEFAULT_SHARD_BYTES,
            overwrite=overwrite,
            on_tensor=on_tensor,
            write_behind=pipeline,
        )
    return MergeSummary(
        out_dir,
        res.n_tensors,
        res.n_bytes,
        p.num_layers,
        res.shards,
        time.perf_counter() - t0,
        digest,
        p.tokenizer_ref if tok_files else None,
    )


def _src_dtype(source: Any, task: TensorTask) -> torch.dtype | None:
    ref, name = task.base or task.inputs[0]
    fn = getattr(source, "source_dtype", None)
    return fn(ref, name) if fn is not None else source.tensor(ref, name).dtype


def _is_float(source: Any, task: TensorTask) -> bool:
    dt = _src_dtype(source, task)
    return dt is None or dt.is_floating_point


def _dtype(source: Any, task: TensorTask) -> torch.dtype:
    return _src_dtype(source, task)  # type: ignore[return-value]


def _generation_config(source: Any, p: MergePlan) -> list[Path]:
    from evomerge.io.adapter_folder import base_folder

    ref = p.recipe.base_model or p.refs[0]
    f = base_folder(source.folder(ref)) / "generation_config.json"  # (an adapter's: its base's)
    return [f] if f.is_file() else []
