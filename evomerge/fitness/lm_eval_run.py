"""One lm-eval evaluation on task objects built once: what ``lm_eval.simple_evaluate`` does
around ``lm_eval.evaluator.evaluate``, without the environment report it ends every call with.

simple_evaluate closes each call with ``add_env_info`` (``pip list`` and ``git`` run in
subprocesses: about a second on this machine, longer than scoring a dozen items of a small
model), which a search paid once per lm-eval entry per candidate, and racing would pay once per
slice. ``evaluate_tasks`` replays the steps before ``evaluate`` that change a score: the python,
numpy and torch seeds; ``gen_kwargs`` on generation tasks; ``num_fewshot`` (a task that sets 0
keeps it; none given and none in the task: 0); the few-shot sampler's seed. Every default is
read from the installed simple_evaluate's signature. A keyword it does not replay (``use_cache``,
``predict_only``, ...) and a TaskManager without ``load`` (lm-eval before it had one) go through
simple_evaluate itself, as before. tests/test_lm_eval_parity.py checks the scores against a
fresh lm-eval ``hf`` run item by item.

lm-eval draws two progress bars per call (building the requests, running them): one call per
candidate, so a search printed two finished bars per candidate over its own progress line.
``_no_lm_eval_bars`` turns those bars off for the call; lm-eval has no switch for the first
(``Task.build_all_requests``), so the modules' ``tqdm`` names are swapped and put back.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import random
from collections.abc import Iterator, Sequence
from typing import Any

# the lm-eval modules that draw a bar per call (requests built, requests run)
_BAR_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")

REPLAYED = frozenset(
    {
        "limit",
        "samples",
        "num_fewshot",
        "apply_chat_template",
        "fewshot_as_multiturn",
        "system_instruction",
        "log_samples",
        "gen_kwargs",
        "bootstrap_iters",
        "random_seed",
        "numpy_random_seed",
        "torch_random_seed",
        "fewshot_random_seed",
        "confirm_run_unsafe_code",
        "cache_requests",
        "rewrite_requests_cache",
        "write_out",
    }
)


def _defaults() -> dict[str, Any]:
    from lm_eval.evaluator import simple_evaluate

    params = inspect.signature(simple_evaluate).parameters
    return {k: params[k].default for k in REPLAYED if k in params}


def evaluate_tasks(lm: Any, tasks: Sequence[Any], manager: Any, **kwargs: Any) -> dict | None:
    """lm-eval's results (with ``samples``) of ``lm`` on the Task objects ``tasks``; ``kwargs``
    as simple_evaluate takes them."""
    with _no_lm_eval_bars():
        return _evaluate(lm, tasks, manager, **kwargs)


@contextlib.contextmanager
def _no_lm_eval_bars() -> Iterator[None]:
    """lm-eval's tqdm bars off inside the block (each module's own ``tqdm`` name)."""
    swapped = []
    for name in _BAR_MODULES:
        module = importlib.import_module(name)
        bar = getattr(module, "tqdm", None)
        if bar is not None:
            swapped.append((module, bar))
            module.tqdm = _silent(bar)
    try:
        yield
    finally:
        for module, bar in swapped:
            module.tqdm = bar


def _silent(bar: Any) -> Any:
    def quiet(*args: Any, **kwargs: Any) -> Any:
        return bar(*args, **{**kwargs, "disable": True})

    return quiet


def _evaluate(lm: Any, tasks: Sequence[Any], manager: Any, **kwargs: Any) -> dict | None:
    from lm_eval import evaluator as ev

    if set(kwargs) - REPLAYED or not hasattr(manager, "load"):
        return ev.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, **kwargs)
    a = {**_defaults(), **kwargs}
    _seed(a)
    loaded = manager.load(list(tasks))
    gen = a.get("gen_kwargs")
    if isinstance(gen, str):
        from lm_eval.utils import simple_parse_args_string

        gen = simple_parse_args_string(gen)
    for task in loaded["tasks"].values():
        if gen and task.get_config("output_type") == "generate_until":
            task.set_config(key="generation_kwargs", value=gen, update=True)
        n, default = a.get("num_fewshot"), task.get_config("num_fewshot")
        if n is not None and default != 0:
            task.set_config(key="num_fewshot", value=n)
        elif n is None and default is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=a.get("fewshot_random_seed"))
    keys = inspect.signature(ev.evaluate).parameters
    passed = {k: v for k, v in a.items() if k in keys and k not in ("lm", "task_dict")}
    return ev.evaluate(lm=lm, task_dict=loaded, **passed)


def _seed(a: dict[str, Any]) -> None:
    """The RNG seeds simple_evaluate sets before a run (None: left as they are)."""
    import numpy as np
    import torch

    if a.get("random_seed") is not None:
        random.seed(a["random_seed"])
    if a.get("numpy_random_seed") is not None:
        np.random.seed(a["numpy_random_seed"])
    if a.get("torch_random_seed") is not None:
        torch.manual_seed(a["torch_random_seed"])
