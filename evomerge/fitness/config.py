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
        validation_function: fitness/my.py:score_heldout   # with validation: below
      - kind: perplexity             # on a text file; score -log(ppl) (or 1/ppl)
        text_file: data/heldout.txt
        max_length: 256
        score: neg_log_ppl

    validation:                      # the winner is chosen on items the search never saw
      items: 100                     # per task, after its search items (null: all the rest)
    racing:                          # score each generation on growing item slices
      enabled: true                  # (docs/racing.md; zoo, lm_eval, perplexity, opted-in python)
      first_slice: 20                # items every candidate is scored on first
      slice: 10                      # items added per round to candidates still in the race
      confidence: 0.95               # one-sided level of the paired bounds that drop one
      indifference: 0.0              # > 0: near-ties (within it) stop as ties

Shorthand: ``{python: "fitness/my.py:score"}`` is one python task.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

from evomerge.errors import UserInputError
from evomerge.fitness.guard import public_benchmark_match, refusal_message
from evomerge.fitness.validation_split import check_split
from evomerge.recipe import format_validation_error


class _Frozen(BaseModel):
    # Field docstrings are the descriptions docs/config.md is generated from.
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class _TaskBase(_Frozen):
    name: str | None = None
    """label of the task in results (default: derived from the task)"""
    weight: float = Field(1.0, ge=0.0)
    """weight of this task's score in its objective's mean"""
    objective: str = "main"
    """tasks sharing an objective are averaged into it (several: multi-objective)"""


class LmEvalTaskConfig(_TaskBase):
    kind: Literal["lm_eval"] = "lm_eval"
    """lm_eval: an lm-evaluation-harness task run in process on the resident model"""
    task: str
    """lm-eval task (or group) name"""
    include_path: list[str] = Field(default_factory=list)
    """local task folder(s), relative to the experiment"""
    metric: str | None = None
    """per-sample metric used as correctness (default: the task's first)"""
    offset: int = 0  # skip each (sub)task's first docs: a held-out split (limit/subsample after)
    """skip each task's first n docs (keep them held out)"""
    limit: int | float | None = None
    """score only the first n items (or a fraction) after the offset"""
    subsample: int | float | None = None
    """score a seeded random subset: n items or a fraction"""
    subsample_seed: int = 0
    """seed of the subsample; default: the experiment seed"""
    num_fewshot: int | None = None
    """few-shot examples per prompt (null: the task's default)"""
    apply_chat_template: bool | str = False
    """wrap prompts in the tokenizer's chat template (or a template name)"""
    fewshot_as_multiturn: bool | None = None
    """few-shot examples as earlier chat turns (null: lm-eval's default)"""
    system_instruction: str | None = None
    """a system message prepended to every prompt"""
    batch_size: int | str = 8
    """lm-eval batch size (an int or auto); also the answers per pass when answers share a
    context (auto: the size lm-eval detects for the longest such request)"""
    extra_args: dict[str, Any] = Field(default_factory=dict)
    """passed to lm_eval.simple_evaluate as is, e.g. {gen_kwargs: {max_gen_toks: 8}}"""
    validation_task: str | None = None
    """the lm-eval task fitness.validation runs on this task's validation docs instead, with
    its own first metric (e.g. real_target when the search ranks on its
    real_target_gold_loglik twin; null: this task)"""

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

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        return _drop_none(handler(self), "validation_task")  # earlier runs hash the same


class ZooTaskConfig(_TaskBase):
    kind: Literal["zoo"] = "zoo"
    """zoo: one of the zoo's fast evaluators (same answers as lm-eval)"""
    evaluator: str
    """evaluator name (evomerge list evaluators)"""
    options: dict[str, Any] = Field(default_factory=dict)
    """the evaluator's options, e.g. {limit: 50}; LM tasks: limit, offset, and score
    (exact_match, or gold_loglik: the gold answer's log-likelihood, a continuous signal)"""
    validation_score: Literal["exact_match", "gold_loglik"] | None = None
    """the score fitness.validation uses instead of options.score (e.g. exact_match when the
    search ranks on gold_loglik; null: the same)"""

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        return _drop_none(handler(self), "validation_score")  # earlier runs hash the same


class PythonTaskConfig(_TaskBase):
    kind: Literal["python"] = "python"
    """python: your function fn(model, tokenizer) -> float, dict, TaskScore or EvalResult"""
    function: str
    """path/to/file.py:function_name, relative to the experiment"""
    validation_function: str | None = None
    """with fitness.validation: the same score on items disjoint from the search's (yours)"""

    @model_validator(mode="after")
    def _ref(self) -> PythonTaskConfig:
        for key in ("function", "validation_function"):
            ref = getattr(self, key)
            path, sep, fn = (ref or "x.py:f").rpartition(":")
            if not sep or not path.endswith(".py") or not fn.isidentifier():
                raise ValueError(f"{key} {ref!r} must look like 'path/to/file.py:function_name'")
        if self.validation_function == self.function:
            raise ValueError(
                "validation_function is the search's own function; give one that scores other items"
            )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        return _drop_none(handler(self), "validation_function")


class PerplexityTaskConfig(_TaskBase):
    kind: Literal["perplexity"] = "perplexity"
    """perplexity: perplexity on a text file"""
    text_file: str
    """the text file, relative to the experiment"""
    max_length: int = Field(256, ge=2)
    """tokens per window"""
    max_windows: int | None = Field(None, ge=1)
    """score at most this many windows (null: the whole file)"""
    score: Literal["neg_log_ppl", "inv_ppl"] = "neg_log_ppl"
    """neg_log_ppl (-log perplexity) or inv_ppl (1 / perplexity)"""


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


class ValidationRacingConfig(_Frozen):
    # The archive's members race for the best on the validation items (evomerge.racing with a
    # need of 1): a member stops once it is surely below the leader, so a wide archive costs
    # little more validation than a narrow one scored in full (docs/racing_measurements.md).
    first_slice: int = Field(12, ge=2)
    """validation items (of the whole suite) every member is scored on before any stops"""
    slice: int = Field(8, ge=1)
    """items added per round to the members still in the race"""
    confidence: float = Field(0.8, gt=0.5, lt=1.0)
    """one-sided level of the paired normal bound that stops a member below the leader"""
    indifference: float = Field(0.0, ge=0.0, lt=1.0)
    """a member also stops once it surely is not above the leader by more than this (e.g.
    0.01): members tied on every item (all 0 on a hard task) stop instead of all running to
    the last item (0: only sure differences stop; 0.01 lost 0.012 of held-out accuracy on
    lm-skills, docs/racing_measurements.md)"""


class ValidationConfig(_Frozen):
    # The search's best on its own items is biased upwards (it was selected on them); the
    # archive is re-scored on items it never saw and the winner is the best there; the
    # experts and the base are scored there too, to compare the winner with.
    items: int | None = Field(None, ge=1)
    """validation items per task, taken after its search items (null: every item left)"""
    racing: ValidationRacingConfig | None = None
    """race the archive's members for the best on the validation items instead of scoring
    each on all of them: the winner gets every item, the others stop once surely below it"""

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        return _drop_none(handler(self), "racing")  # earlier runs hash the same


class RacingConfig(_Frozen):
    # Rank-based drivers need the order of a generation's best, not every score to full
    # precision; racing stops scoring a candidate once it surely cannot be among them
    # (evomerge.racing).
    enabled: bool = True
    """race the candidates of each generation on growing item slices (false: score every item)"""
    first_slice: int = Field(20, ge=2)
    """items (of the whole suite) every fresh candidate is scored on before any is dropped"""
    slice: int = Field(10, ge=1)
    """items added per round to the candidates still in the race"""
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """one-sided level of the paired normal bound that drops a candidate"""
    settle: Literal["order", "set"] = "order"
    """order: the driver's best k are scored on every item, so their order is exact; set: a
    candidate also stops once it is surely among the best k and cannot enter the archive (the
    k are then ordered by their means so far; docs/racing.md)"""
    indifference: float = Field(0.0, ge=0.0, lt=1.0)
    """indifference zone, in fitness units (e.g. 0.01 of accuracy): a candidate also stops once
    it surely is not above the one it is compared with by more than this, so near-ties stop
    instead of running to the last item (0: only sure differences stop; docs/racing.md)"""
    order: Literal["run", "generation"] = "run"
    """run: one seeded item order for the whole run, so every generation's first slice is the
    same items; generation: a fresh seeded order each generation, so the search is not ranked
    on the same few items generation after generation (docs/racing.md)"""
    archive_places: int | None = Field(None, ge=0, le=100)
    """the archive's best places a candidate is raced for: it is scored on until it surely
    cannot take one of them (default: all of archive.top_k). 1: racing guards only the best;
    the archive's later places hold the best fully scored candidates. 0: racing guards no
    place, only the driver's need, and the archive holds the best candidates by their means
    so far (a stopped one's over the items it was scored on), for fitness.validation, which
    it needs, to re-score on its own items (docs/racing.md)"""

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        data = handler(self)  # the defaults of later fields are left out: earlier runs hash
        if isinstance(data, dict):  # the same
            if data.get("settle") == "order":
                data.pop("settle")
            if data.get("indifference") == 0.0:
                data.pop("indifference")
            if data.get("order") == "run":
                data.pop("order")
            if data.get("archive_places") is None:
                data.pop("archive_places", None)
        return data


class ConstraintConfig(_Frozen):
    # Deb's feasibility rules (evomerge.fitness.constraints): a candidate outside a bound is
    # infeasible; it never enters the archive and single-objective drivers rank it below every
    # feasible one.
    task: TaskConfig
    """the task scored for this constraint, same form as a tasks entry (objective, weight unused)"""
    min: float | None = None
    """the task's score must be >= min (e.g. backdoor_safety = 1 - attack success rate)"""
    max: float | None = None
    """the task's score must be <= max"""

    @model_validator(mode="after")
    def _bound(self) -> ConstraintConfig:
        if self.min is None and self.max is None:
            raise ValueError("give a bound: min (score >= min) and/or max (score <= max)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}: no score can satisfy both")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        return _drop_none(_drop_none(handler(self), "min"), "max")


class FitnessConfig(_Frozen):
    tasks: list[TaskConfig]
    """the tasks scored per candidate (one kind per entry: lm_eval, zoo, python, perplexity)"""
    allow_public_benchmarks: bool = False
    """allow public benchmark names as search fitness (contamination risk)"""
    validation: ValidationConfig | None = None
    """re-score the archive on held-out items and pick the winner there (null: off)"""
    racing: RacingConfig | None = None
    """score each generation on growing item slices, dropping sure losers (null: off)"""
    constraints: list[ConstraintConfig] = Field(default_factory=list)
    """tasks whose score must stay within bounds; infeasible candidates never enter the archive"""

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
        for i, c in enumerate(self.constraints):
            label = task_label(c.task)
            if label in labels:
                raise ValueError(
                    f"constraints.{i}.task: name {label!r} is already a task's or another "
                    "constraint's; give it a distinct 'name'"
                )
            labels.append(label)
            if not self.allow_public_benchmarks:
                t = c.task
                names = [t.task, t.name] if t.kind == "lm_eval" else [t.name]
                for n in filter(None, names):
                    if pat := public_benchmark_match(n):
                        raise ValueError(refusal_message(n, pat, f"constraints.{i}.task"))
        if self.constraints and self.racing is not None and self.racing.enabled:
            raise ValueError(
                "racing: constraints need every item of a candidate scored; remove "
                "fitness.racing (or set enabled: false) or remove fitness.constraints"
            )
        r = self.racing
        if r is not None and r.enabled and r.archive_places == 0 and self.validation is None:
            raise ValueError(
                "racing.archive_places: 0 lets candidates into the archive on a mean over part "
                "of the items, which only fitness.validation re-scores; set fitness.validation "
                "or archive_places: 1 or more"
            )
        if self.validation is not None:
            for i, t in enumerate(self.tasks):
                check_split(t, f"tasks.{i}")
        for i, t in enumerate(self.tasks):
            field = {"lm_eval": "validation_task", "zoo": "validation_score"}.get(t.kind)
            if self.validation is None and field and getattr(t, field) is not None:
                raise ValueError(
                    f"tasks.{i}.{field}: there is no fitness.validation to use it; set "
                    f"fitness.validation or remove {field}"
                )
        raced = [] if self.racing is None or not self.racing.enabled else ["fitness.racing"]
        if self.validation is not None and self.validation.racing is not None:
            raced.append("fitness.validation.racing")
        for field in raced:
            from evomerge.fitness.items import check_raceable

            check_raceable(self, field)
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        # Without validation the dump (and the run's structural hash) is what it always was.
        data = _drop_none(_drop_none(handler(self), "validation"), "racing")
        if isinstance(data, dict) and not data.get("constraints", 1):
            data.pop("constraints")  # unconstrained runs hash as they always did
        return data

    @property
    def labels(self) -> list[str]:
        return [task_label(t) for t in self.tasks]

    @property
    def objective_names(self) -> list[str]:
        return list(dict.fromkeys(t.objective for t in self.tasks))


def _drop_none(data: Any, key: str) -> Any:
    """A dump without ``key`` when it is unset: configs (and the structural hash of runs)
    written before the key existed stay byte for byte the same."""
    if isinstance(data, dict) and data.get(key, 0) is None:
        data.pop(key)
    return data


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
    for line in format_validation_error(err, origin, FitnessConfig).splitlines():
        for k in kinds:
            line = re.sub(rf"(tasks\.\d+|constraints\.\d+\.task)\.{k}\b", r"\1", line)
        lines.append(line)
    return "\n".join(lines)
