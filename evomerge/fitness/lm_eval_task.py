"""lm-eval-harness tasks, run in process on the resident model (no disk, no server).

Each call wraps the model the evaluator materialized in place in an ``HFLM`` (cached while the
same model and tokenizer objects are passed, which is every candidate of a worker) and calls
``lm_eval.simple_evaluate`` with ``log_samples=True``: the per-sample metric values are the
per-example correctness, ordered by ``doc_id``. ``limit`` is lm-eval's own first-n; ``subsample``
draws a seeded random subset of doc ids once (numpy ``default_rng(subsample_seed)``) and passes it
as ``samples=``, so every candidate is scored on the same items. Local task folders are given by
``include_path``; lm-eval's installed tasks are indexed only when the task is not found there
(indexing them costs seconds), and they work offline when their datasets are in the HF cache.
Instruct models: ``apply_chat_template``, ``fewshot_as_multiturn`` and ``system_instruction`` go
to lm-eval as they are; each item then scores as in a fresh lm-eval ``hf`` run on the model's
folder (docs/evaluation.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.errors import UserInputError
from evomerge.fitness.config import LmEvalTaskConfig
from evomerge.results import TaskScore

_MANAGERS: dict[tuple, Any] = {}


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

    def _subsample(self) -> dict[str, list[int]] | None:
        """Doc ids per leaf task, or None where lm-eval's own ``limit`` (the first n) serves:
        the docs after ``offset``, the first ``limit`` of them or a seeded ``subsample``."""
        c = self.cfg
        if c.subsample is None and c.offset == 0 and not self.validation:
            return None
        if self._samples is None:
            import numpy as np

            leaves = _task_objects(self.manager(), c.task)
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
            from lm_eval.models.huggingface import HFLM

            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.cfg.batch_size)
            self._lm = (model, tokenizer, lm)
        return self._lm[2]

    def run(self, model: Any, tokenizer: Any) -> dict[str, TaskScore]:
        from lm_eval import simple_evaluate

        c = self.cfg
        if c.apply_chat_template and not getattr(tokenizer, "chat_template", None):
            raise UserInputError(
                f"lm_eval task {c.task!r}: apply_chat_template is on but the model's tokenizer "
                "has no chat template; set apply_chat_template: false for a base model"
            )
        samples = self._subsample()
        out = simple_evaluate(
            model=self._model(model, tokenizer),
            tasks=[c.task],
            task_manager=self.manager(),
            limit=c.limit if samples is None else None,  # (else: in the ids)
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
        names = sorted(out["samples"])
        scores = {n: self._task_score(n, out) for n in names}
        if len(scores) == 1:
            return {self.label: next(iter(scores.values()))}
        return {f"{self.label}/{n}": s for n, s in scores.items()}

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
