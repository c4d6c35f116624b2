"""Fitness configuration: the ``fitness:`` block of an experiment, or a suite YAML under
``fitness/``. Frozen pydantic, unknown keys rejected; tasks discriminated by ``kind``.

YAML shape::

    allow_public_benchmarks: false   # contamination guard (see evomerge.fitness.guard)
    tasks:
      - kind: lm_eval                # lm-eval-harness, in process, on the resident model
        name: cross_lookup           # label in the results (default: the task name)
        task: cross_lookup           # lm-eval task name (or a group)
        include_path: fitness/cross_lookup   # local task folder(s); relative to the config
        metric: exact_match          # per-sample metric used as correctness (default: first)
        offset: 0                    # skip each task's first n docs (hold them out)
        subsample: 32                # seeded random subset: n items or a fraction
        subsample_seed: 0            # (or ``limit``: the first n items after the offset)
        num_fewshot: null
        apply_chat_template: false   # instruct models: true (or a template name)
        fewshot_as_multiturn: null   # chat few-shot as earlier turns (null: lm-eval's default)
        system_instruction: null     # a system prompt (lm-eval's --system_instruction)
        batch_size: 16
        extra_args: {gen_kwargs: {max_gen_toks: 8}}   # passed to simple_evaluate as-is
        weight: 1.0
        objective: main              # tasks sharing an objective are averaged into it
      - kind: zoo                    # evomerge.zoo.evaluate's fast evaluators
        evaluator: lookup
        options: {n: 200}
      - kind: python                 # your function: fn(model, tokenizer) -> float|dict|EvalResult
        function: fitness/my.py:score
      - kind: perplexity             # on a text file; score -log(ppl) (or 1/ppl)
        text_file: data/heldout.txt
        max_length: 256
        score: neg_log_ppl

Shorthand: ``{python: "fitness/my.py:score"}`` is one python task.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.errors import UserInputError
from evomerge.fitness.guard import public_benchmark_match, refusal_message
from evomerge.recipe import format_validation_error


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _TaskBase(_Frozen):
    name: str | None = None
    weight: float = Field(1.0, ge=0.0)
    objective: str = "main"


class LmEvalTaskConfig(_TaskBase):
    kind: Literal["lm_eval"] = "lm_eval"
    task: str
    include_path: list[str] = Field(default_factory=list)
    metric: str | None = None
    offset: int = 0  # skip each (sub)task's first docs: a held-out split (limit/subsample after)
    limit: int | float | None = None
    subsample: int | float | None = None
    subsample_seed: int = 0
    num_fewshot: int | None = None
    apply_chat_template: bool | str = False
    fewshot_as_multiturn: bool | None = None  # None: lm-eval's default
    system_instruction: str | None = None
    batch_size: int | str = 8
    extra_args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _one_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("include_path"), str):
            data = {**data, "include_path": [data["include_path"]]}
        return data

    @model_validator(mode="after")
    def _check(self) -> LmEvalTaskConfig:
        if self.limit is not None and self.subsample is not None:
            raise ValueError(
                "give either 'limit' (first n items) or 'subsample' (seeded), not both"
            )
        if self.offset < 0:
            raise ValueError("offset must be >= 0 (docs skipped at the start of each task)")
        for key in ("limit", "subsample"):
            v = getattr(self, key)
            if v is not None and (v <= 0 or (isinstance(v, float) and v > 1)):
                raise ValueError(f"{key} must be a positive count or a fraction in (0, 1]")
        reserved = {"model", "tasks", "task_manager", "limit", "samples", "log_samples"}
        reserved |= {"apply_chat_template", "fewshot_as_multiturn", "system_instruction"}
        if bad := reserved & set(self.extra_args):
            raise ValueError(
                f"extra_args may not set {sorted(bad)}: evomerge sets them (the chat settings "
                "are task fields: apply_chat_template, fewshot_as_multiturn, system_instruction)"
            )
        return self


class ZooTaskConfig(_TaskBase):
    kind: Literal["zoo"] = "zoo"
    evaluator: str
    options: dict[str, Any] = Field(default_factory=dict)


class PythonTaskConfig(_TaskBase):
    kind: Literal["python"] = "python"
    function: str

    @model_validator(mode="after")
    def _ref(self) -> PythonTaskConfig:
        path, sep, fn = self.function.rpartition(":")
        if not sep or not path.endswith(".py") or not fn.isidentifier():
            raise ValueError(
                f"function {self.function!r} must look like 'path/to/file.py:function_name'"
            )
        return self


class PerplexityTaskConfig(_TaskBase):
    kind: Literal["perplexity"] = "perplexity"
    text_file: str
    max_length: int = Field(256, ge=2)
    max_windows: int | None = Field(None, ge=1)
    score: Literal["neg_log_ppl", "inv_ppl"] = "neg_log_ppl"


TaskConfig = Annotated[
    LmEvalTaskConfig | ZooTaskConfig | PythonTaskConfig | PerplexityTaskConfig,
    Field(discriminator="kind"),
]


def task_label(t: Any) -> str:
    """A task's name in the results: ``name``, else a name derived from what it runs."""
    if t.name:
        return t.name
    if t.kind == "lm_eval":
        return t.task
    if t.kind == "zoo":
        return t.evaluator
    if t.kind == "python":
        return t.function.rpartition(":")[2]
    return "perplexity"


class FitnessConfig(_Frozen):
    tasks: list[TaskConfig]
    allow_public_benchmarks: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "python" in data and "tasks" not in data:
            rest = {k: v for k, v in data.items() if k != "python"}
            return {**rest, "tasks": [{"kind": "python", "function": data["python"]}]}
        return data

    @model_validator(mode="after")
    def _check(self) -> FitnessConfig:
        if not self.tasks:
            raise ValueError("tasks is empty; list at least one task")
        labels = [task_label(t) for t in self.tasks]
        if len(set(labels)) != len(labels):
            raise ValueError(f"task names {labels} repeat; give each task a distinct 'name'")
        for obj in self.objective_names:
            if sum(t.weight for t in self.tasks if t.objective == obj) <= 0:
                raise ValueError(
                    f"objective {obj!r}: every task weight is 0; give one a positive weight"
                )
        if not self.allow_public_benchmarks:
            for i, t in enumerate(self.tasks):
                names = [t.task, t.name] if t.kind == "lm_eval" else [t.name]
                for n in filter(None, names):
                    if pat := public_benchmark_match(n):
                        raise ValueError(refusal_message(n, pat, f"tasks.{i}"))
        return self

    @property
    def labels(self) -> list[str]:
        return [task_label(t) for t in self.tasks]

    @property
    def objective_names(self) -> list[str]:
        return list(dict.fromkeys(t.objective for t in self.tasks))


def parse_fitness_config(data: Any, *, origin: str = "fitness") -> FitnessConfig:
    if not isinstance(data, dict):
        raise UserInputError(f"{origin}: expected a mapping, got {type(data).__name__}")
    try:
        return FitnessConfig.model_validate(data)
    except ValidationError as err:
        raise UserInputError(_format(err, origin)) from None


def _format(err: ValidationError, origin: str) -> str:
    """Like recipe.format_validation_error, minus pydantic's union tag in the path
    ('tasks.0.lm_eval.limit' reads 'tasks.0.limit')."""
    kinds = {"lm_eval", "zoo", "python", "perplexity"}
    lines = []
    for line in format_validation_error(err, origin).splitlines():
        for k in kinds:
            line = re.sub(rf"(tasks\.\d+)\.{k}\b", r"\1", line)
        lines.append(line)
    return "\n".join(lines)
