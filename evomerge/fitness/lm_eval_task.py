"""lm-eval-harness tasks, run in process on the resident model (no disk, no server).

Each call wraps the model the evaluator materialized in place in an ``HFLM`` (``lm_eval_lm``'s
subclass, whose log-likelihood requests project only the positions they read; cached while the
same model and tokenizer objects are passed, which is every candidate of a worker) and runs
lm-eval with ``log_samples=True`` (``lm_eval_run.evaluate_tasks``: simple_evaluate's steps
without its per-call environment report): the per-sample metric values are the
per-example correctness, ordered by ``doc_id``. ``limit`` is lm-eval's own first-n; ``subsample``
draws a seeded random subset of doc ids once (numpy ``default_rng(subsample_seed)``) and passes it
as ``samples=``, so every candidate is scored on the same items. Local task folders are given by
``include_path``; lm-eval's installed tasks are indexed only when the task is not found there
(indexing them costs seconds), and they work offline when their datasets are in the HF cache.
Instruct models: ``apply_chat_template``, ``fewshot_as_multiturn`` and ``system_instruction`` go
to lm-eval as they are; each item then scores as in a fresh lm-eval ``hf`` run on the model's
folder (docs/evaluation.md).

The task objects (datasets loaded, prompts compiled) are built once per process and reused by
every call: building them by name costs more than scoring a few items, and a fitness of several
lm-eval entries paid it once per entry per candidate. Racing
(``fitness.racing``, docs/racing.md) scores a slice of the search window at a time:
``run_items`` passes the slice's doc ids as ``samples=`` to the same task objects and the same
``HFLM`` wrapper, so a slice costs only its items.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError
from evomerge.fitness.config import LmEvalTaskConfig
from evomerge.results import TaskScore

# lm-eval warns whenever HFLM wraps a model object instead of loading a name (other model
# arguments "may be ignored", "do not launch via accelerate") and whenever a task with a
# custom_dataset is loaded (pass custom kwargs with `--metadata` in lm-eval's console).
# evomerge wraps its resident model on purpose, one process per worker, and is not that
# console: advice that does not apply, shown several times per search and per worker. Only
# these notices are dropped; every other lm-eval message is shown.
_NOTICES_NOT_FOR_EVOMERGE = {
    "lm_eval.models.huggingface": (
        "`pretrained` model kwarg is not of type `str`",
        "Passed an already-initialized model through `pretrained`",
    ),
    "lm_eval.api.task": ("Custom kwargs can be passed to `--metadata`",),
}


class _DropNotices(logging.Filter):
    def __init__(self, texts: tuple[str, ...]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


for _name, _texts in _NOTICES_NOT_FOR_EVOMERGE.items():
    logging.getLogger(_name).addFilter(_DropNotices(_texts))  # once: a module runs once

_MANAGERS: dict[tuple, Any] = {}
# (manager, task, num_fewshot, extra_args) -> {leaf name: Task}. Each run re-applies
# num_fewshot and gen_kwargs to the objects (lm_eval_run); a runner with other values of
# those gets its own objects (lm-eval keeps a num_fewshot once set to 0).
_TASKS: dict[tuple, dict[str, Any]] = {}


def task_manager(include_path: tuple[str, ...], include_defaults: bool) -> Any:
    """One TaskManager per (folders, defaults): building one indexes every task YAML."""
    key = (include_path, include_defaults)
    if key not in _MANAGERS:
        from lm_eval.tasks import TaskManager

        _MANAGERS[key] = TaskManager(
            include_path=list(include_path) or None, include_defaults=include_defaults
        )
    return _MANAGERS[key]


def _task_objects(manager: Any, task: str) -> dict[str, Any]:
    """{task name: Task} of every leaf task under ``task`` (a group's subtasks)."""
    load = getattr(manager, "load", None)
    if load is not None:  # lm-eval's loader since get_task_dict was deprecated: flat dicts
        return dict(load([task])["tasks"])
    from lm_eval.tasks import get_task_dict  # older lm-eval: a nested, group-keyed dict

    return _leaf_tasks(get_task_dict([task], manager))


def _leaves_of(manager: Any, cfg: LmEvalTaskConfig) -> dict[str, Any]:
    """The leaf Task objects of ``cfg.task``, built once per process (see ``_TASKS``)."""
    key = (manager, cfg.task, cfg.num_fewshot, repr(sorted(cfg.extra_args.items())))
    if key not in _TASKS:
        try:
            tasks = _task_objects(manager, cfg.task)
        except Exception as err:  # noqa: BLE001 - the dataset, its files or the task's code
            raise UserInputError(_not_loaded(cfg.task, err)) from None
        _TASKS[key] = dict(sorted(tasks.items()))
    return _TASKS[key]


def _not_loaded(task: str, err: Exception) -> str:
    """One line for a task whose documents lm-eval could not load (often: a hub dataset on an
    offline machine, which lm-eval reports as a multi-line ConnectionError)."""
    what = " ".join(str(err).split()) or "no message"
    return (
        f"lm_eval task {task!r}: its documents could not be loaded ({type(err).__name__}: "
        f"{what}); offline (HF_DATASETS_OFFLINE=1) its dataset must already be in the HF "
        "datasets cache, or give a local task folder (include_path) whose YAML reads local "
        "files (dataset_path: json)"
    )


def _first_n(n_docs: int, limit: int | float | None) -> int:
    """How many docs lm-eval's own ``limit`` scores (its ``get_sample_size``: a fraction below
    1 is rounded up, anything else is a count)."""
    if limit is None:
        return n_docs
    return min(n_docs, math.ceil(n_docs * limit) if limit < 1.0 else int(limit))


def _count(k: int | float, n: int) -> int:
    """A count or a fraction of n docs (at least one), capped at n."""
    return max(1, round(k * n)) if isinstance(k, float) else min(int(k), n)


def _leaf_tasks(task_dict: dict) -> dict[str, Any]:
    """Flatten lm-eval's (possibly nested, group-keyed) task dict to {task name: Task}."""
    out: dict[str, Any] = {}
    for key, val in task_dict.items():
        if isinstance(val, dict):
            out.update(_leaf_tasks(val))
        else:
            out[getattr(key, "group_name", key) if not isinstance(key, str) else key] = val
    return out


class LmEvalTask:
    def __init__(
        self,
        label: str,
        cfg: LmEvalTaskConfig,
        base_dir: Path | None = None,
        *,
        validation: bool = False,
        validation_items: int | None = None,
    ) -> None:
        self.label = label
        self.cfg = cfg
        self.validation = validation  # score the docs the search leaves out (fitness.validation)
        self.validation_items = validation_items
        self.include_path = tuple(self._resolve(p, base_dir) for p in cfg.include_path)
        self._tm: Any = None
        self._samples: dict[str, list[int]] | None = None
        self._window: dict[str, list[int]] | None = None  # lm-eval's own limit: first n docs
        self._lm: tuple[Any, Any, Any] | None = None

    @staticmethod
    def _resolve(p: str, base_dir: Path | None) -> str:
        path = Path(p).expanduser()
        if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
            path = base_dir / path
        if not path.exists():
            raise UserInputError(f"include_path: task folder {path} not found")
        return str(path.resolve())

    def manager(self) -> Any:
        """The TaskManager that knows the task (local folders first, then installed tasks)."""
        if self._tm is None:
            tm = task_manager(self.include_path, include_defaults=not self.include_path)
            if self.cfg.task not in tm.all_tasks:
                tm = task_manager(self.include_path, include_defaults=True)
            if self.cfg.task not in tm.all_tasks:
                where = f" or in {list(self.include_path)}" if self.include_path else ""
                raise UserInputError(
                    f"lm_eval task {self.cfg.task!r} not found among lm-eval's tasks{where}; "
                    "check the name or include_path"
                )
            self._tm = tm
        return self._tm

    def leaves(self) -> dict[str, Any]:
        """{leaf task name: Task}, sorted by name (a group's subtasks; one for a plain task)."""
        return _leaves_of(self.manager(), self.cfg)

    def _subsample(self) -> dict[str, list[int]] | None:
        """Doc ids per leaf task, or None where lm-eval's own ``limit`` (the first n) serves:
        the docs after ``offset``, the first ``limit`` of them or a seeded ``subsample``."""
        c = self.cfg
        if c.subsample is None and c.offset == 0 and not self.validation:
            return None
        if self._samples is None:
            import numpy as np

            leaves = self.leaves()
            rng = np.random.default_rng(c.subsample_seed)
            self._samples = {}
            for name in sorted(leaves):
                n_docs = len(list(leaves[name].eval_docs))
                if c.offset >= n_docs:
                    raise UserInputError(
                        f"lm_eval task {name!r}: offset {c.offset} skips all of its {n_docs} "
                        "docs; lower offset"
                    )
                after = np.arange(c.offset, n_docs)
                ids = after
                if c.limit is not None:
                    ids = after[: _count(c.limit, after.size)]
                elif c.subsample is not None:
                    ids = np.sort(rng.choice(after, _count(c.subsample, after.size), replace=False))
                if self.validation:
                    ids = self._held_out(name, after, ids, rng)
                self._samples[name] = [int(i) for i in ids]
        return self._samples

    def _held_out(self, name: str, after: Any, search: Any, rng: Any) -> Any:
        """Validation docs: after ``offset`` and not scored by the search; the next ones after a
        ``limit`` window, else a draw that continues the subsample's seeded stream."""
        import numpy as np

        rest = np.setdiff1d(after, search)
        if rest.size == 0:
            raise UserInputError(
                f"fitness.validation: lm_eval task {name!r} has no docs left after the search's "
                f"{search.size}; lower limit or subsample"
            )
        k = rest.size if self.validation_items is None else min(self.validation_items, rest.size)
        if self.cfg.limit is not None:
            return rest[:k]
        return np.sort(rng.choice(rest, k, replace=False))

    @property
    def sample_ids(self) -> dict[str, list[int]] | None:
        """The doc ids run per lm-eval task (None without ``offset`` or ``subsample``: lm-eval
        picks, the first ``limit`` or all)."""
        return self._subsample()

    def _model(self, model: Any, tokenizer: Any) -> Any:
        if self._lm is None or self._lm[0] is not model or self._lm[1] is not tokenizer:
            from evomerge.fitness.lm_eval_lm import continuation_hflm

            lm = continuation_hflm(model, tokenizer, self.cfg.batch_size)
            self._lm = (model, tokenizer, lm)
        return self._lm[2]

    def window(self) -> dict[str, list[int]]:
        """The doc ids of the search window per leaf task, in doc order: the ids ``sample_ids``
        gives, else the first docs lm-eval's ``limit`` takes (all without one)."""
        ids = self._subsample()
        if ids is not None:
            return ids
        if self._window is None:  # counting the docs walks the dataset: once
            self._window = {
                name: list(range(_first_n(len(list(task.eval_docs)), self.cfg.limit)))
                for name, task in self.leaves().items()
            }
        return self._window

    def _entry(self, name: str) -> str:
        """The result entry of a leaf task: the label, or ``label/name`` for a group's."""
        return self.label if len(self.leaves()) == 1 else f"{self.label}/{name}"

    def item_counts(self) -> dict[str, int]:
        """Entry label -> docs in the search window (racing's item pool). Refuses, in one line,
        a metric lm-eval does not average over items (racing's values must average to it)."""
        from lm_eval.api.metrics import mean

        for name, task in self.leaves().items():
            aggs = task.aggregation()
            listed = [m.get("metric") for m in task.config.metric_list or [] if isinstance(m, dict)]
            metric = self.cfg.metric or next((m for m in listed if m in aggs), None)
            metric = metric or next(iter(aggs), None)
            if metric not in aggs:
                raise UserInputError(
                    f"lm_eval task {name!r}: metric {metric!r} is not one of its metrics; "
                    f"use one of {sorted(aggs)}"
                )
            agg = aggs[metric]
            if agg is not mean:
                how = getattr(agg, "__name__", repr(agg))
                raise UserInputError(
                    f"fitness.racing: lm_eval task {name!r} aggregates {metric!r} with {how}, "
                    "not a mean over items, so a slice cannot estimate it; remove "
                    "fitness.racing or set the task's metric to a per-item mean"
                )
        return {self._entry(name): len(ids) for name, ids in self.window().items()}

    def run_items(
        self, model: Any, tokenizer: Any, positions: dict[str, list[int]]
    ) -> dict[str, TaskScore]:
        """Scores of the window docs at ``positions`` (entry label -> positions in its window),
        per_example in the order given: one lm-eval run over those docs only."""
        window = self.window()
        by_entry = {self._entry(name): name for name in window}
        docs = {by_entry[e]: [window[by_entry[e]][p] for p in pos] for e, pos in positions.items()}
        samples = {name: sorted(set(ids)) for name, ids in docs.items() if ids}
        out = self._evaluate(model, tokenizer, samples, None)
        scores = {}
        for name, ids in samples.items():
            ts = self._task_score(name, out)
            if len(ts.per_example) != len(ids):
                raise RuntimeError(
                    f"lm_eval task {name!r} scored {len(ts.per_example)} of {len(ids)} docs"
                )
            value = dict(zip(ids, ts.per_example, strict=True))  # lm-eval runs them in doc order
            got = [value[d] for d in docs[name]]
            scores[self._entry(name)] = TaskScore.from_examples(got, metric=ts.metric)
        return scores

    def run(self, model: Any, tokenizer: Any) -> dict[str, TaskScore]:
        samples = self._subsample()
        out = self._evaluate(model, tokenizer, samples, self.cfg.limit if samples is None else None)
        return {self._entry(n): self._task_score(n, out) for n in sorted(out["samples"])}

    def _evaluate(
        self, model: Any, tokenizer: Any, samples: dict[str, list[int]] | None, limit: Any
    ) -> dict:
        """lm-eval on this process's task objects: the leaves in ``samples`` (all without)."""
        from evomerge.fitness.lm_eval_run import evaluate_tasks

        c = self.cfg
        if c.apply_chat_template and not getattr(tokenizer, "chat_template", None):
            raise UserInputError(
                f"lm_eval task {c.task!r}: apply_chat_template is on but the model's tokenizer "
                "has no chat template; set apply_chat_template: false for a base model"
            )
        leaves = self.leaves()
        tasks = [t for n, t in leaves.items() if samples is None or n in samples]
        out = evaluate_tasks(
            self._model(model, tokenizer),
            tasks,
            self.manager(),
            limit=limit,
            samples=samples,
            num_fewshot=c.num_fewshot,
            apply_chat_template=c.apply_chat_template,
            system_instruction=c.system_instruction,
            log_samples=True,
            **self._chat_args(),
            **c.extra_args,
        )
        if not out or "samples" not in out:
            raise RuntimeError(f"lm_eval task {c.task!r} returned no samples")
        return out

    def _chat_args(self) -> dict[str, Any]:
        """fewshot_as_multiturn only when set: lm-eval's default differs between versions."""
        m = self.cfg.fewshot_as_multiturn
        return {} if m is None else {"fewshot_as_multiturn": m}

    def _task_score(self, name: str, out: dict) -> TaskScore:
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        metric = self.cfg.metric or self._first_metric(name, out, samples)
        if any(metric not in s for s in samples):
            have = sorted({k for s in samples for k in s if isinstance(s[k], (int, float))})
            raise UserInputError(
                f"lm_eval task {name!r}: metric {metric!r} is not in its samples; use one of {have}"
            )
        per_example = tuple(float(s[metric]) for s in samples)
        agg = out["results"].get(name, {})
        key = next((k for k in agg if k.split(",")[0] == metric), None)
        score = float(agg[key]) if key is not None else sum(per_example) / len(per_example)
        return TaskScore(score=score, per_example=per_example, metric=metric)

    @staticmethod
    def _first_metric(name: str, out: dict, samples: list[dict]) -> str:
        """The task's first listed metric (the task author's preference order)."""
        metrics = out.get("configs", {}).get(name, {}).get("metric_list") or []
        for m in metrics:
            if isinstance(m, dict) and m.get("metric") in samples[0]:
                return str(m["metric"])
        raise UserInputError(f"lm_eval task {name!r}: no per-sample metric found; set 'metric'")
