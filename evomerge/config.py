"""ExperimentConfig: one search, as written in ``experiments/*.yaml``. Frozen pydantic, unknown
keys rejected, every error names the field and the fix.

Validators only validate. ``load_experiment`` (a YAML file) and ``parse_experiment`` (a mapping)
first read the files the experiment names (its space preset, its fitness suite) and fill in
what follows from it (seeds, absolute paths); the models are resolved to folders (zoo builds,
GGUF conversions) later, once, by ``evomerge.experiment.resolve_experiment``.

YAML shape (``experiments/toy_ps_cmaes.yaml`` is a commented example)::

    name: toy_ps_cmaes                  # a label for reports (optional)
    models: [zoo:lm/expert_a, path/to/expert_b]   # HF folders or zoo:<zoo>/<model> names
    base_model: zoo:lm/base             # for task-vector operators (optional)
    space: ps_dare_ties                 # preset name/path, {preset: NAME, <overrides>}, or inline
    fitness: lm_cross                   # suite name (fitness/<name>.yaml), a path, or inline
    driver: {name: cma_es, options: {popsize: 8}}
    budget: {max_evals: 200, max_seconds: 600}   # see BudgetConfig (totals vs per run)
    seed: 0
    workers: 1                          # >1 or ray_address: the Ray evaluator
    ray_address: null
    archive: {top_k: 3}
    evaluation: {timeout_s: 600, device: cpu, stats_cache: 1.0}
    recipe_paths: []                    # folders where recipe:<digest> resolves (merges of merges)

Structural vs non-structural (what ``evomerge resume`` compares): the *structural* part decides
which candidates are proposed and how they score -- ``models``, ``base_model``, ``space`` (the
resolved preset content, not its name), ``fitness`` (resolved), ``driver`` (name and options),
``seed``. Changing any of it refuses the resume. Everything else (``budget``, ``workers``,
``ray_address``, ``archive``, ``evaluation``, ``name``, ``recipe_paths``) may change between
runs: a bigger budget continues the same search. (A resume on another device type stays valid
but may round differently: exactness holds on the same device.)

Seeds: the space's recipe seed (DARE/DELLA masks) and each lm-eval task's ``subsample_seed``
default to the experiment ``seed`` unless set explicitly; the driver is seeded with it too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from evomerge.errors import UserInputError
from evomerge.fitness.config import FitnessConfig, parse_fitness_config
from evomerge.io.yaml_read import read_yaml
from evomerge.model_refs import ZOO_PREFIX
from evomerge.model_refs import resolve_model_ref as resolve_model_ref  # (its old home)
from evomerge.recipe import format_validation_error
from evomerge.spaces.config import SpaceConfig, parse_space_config

STRUCTURAL_FIELDS = ("models", "base_model", "space", "fitness", "driver", "seed")


class _Frozen(BaseModel):
    # Field docstrings are the descriptions docs/config.md is generated from.
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class DriverConfig(_Frozen):
    name: str = "cma_es"
    """search driver: cma_es, m2n2, frank_wolfe, adamerging, optuna or random (evomerge list)"""
    options: dict[str, Any] = Field(default_factory=dict)
    """the driver's own options (see its section below), e.g. {popsize: 8}"""


class BudgetConfig(_Frozen):
    """``max_evals`` counts fresh evaluations (a recipe already scored is reused for free);
    ``max_candidates`` caps told candidates (default 10 x max_evals) so a driver that keeps
    proposing known recipes still stops. A fixed-batch driver (CMA-ES) finishes its generation,
    so the last generation may overshoot ``max_evals`` by less than one population.

    ``max_evals`` and ``max_candidates`` are totals over the search and all its resumes (raise
    them to continue a finished run); ``max_seconds`` is the wall-clock time of each search or
    resume, counted from its own start; ``max_total_seconds`` caps search time summed over the
    search and all its resumes."""

    max_evals: int | None = Field(None, ge=1)
    """stop after this many fresh evaluations (repeats of a scored recipe are free)"""
    max_seconds: float | None = Field(None, gt=0)
    """stop after this many seconds of wall-clock time, counted from each search or resume's start"""
    max_candidates: int | None = Field(None, ge=1)
    """stop after this many told candidates, repeats included (default 10 x max_evals)"""
    max_total_seconds: float | None = Field(None, gt=0)
    """cap on search seconds summed over the search and all its resumes"""
    max_item_evals: int | None = Field(None, ge=1)
    """stop after this many item evaluations (items scored, summed over fresh candidates)"""

    @model_validator(mode="after")
    def _some_budget(self) -> BudgetConfig:
        given = (self.max_evals, self.max_seconds, self.max_total_seconds, self.max_item_evals)
        if not any(given):
            raise ValueError("give max_evals and/or max_seconds (e.g. budget: {max_evals: 200})")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        # Without max_item_evals the dump is what it was before the key existed.
        out = handler(self)
        if out.get("max_item_evals", 0) is None:
            out.pop("max_item_evals")
        return out


class ArchiveConfig(_Frozen):
    top_k: int = Field(3, ge=1, le=100)
    """how many of the best merged models the run keeps under RUN_DIR/archive/ (validation picks the winner among them; under racing each place costs items unless racing.archive_places is 0; with fitness.validation.racing a wider archive, e.g. 10, costs little more validation)"""


class BaselinesConfig(_Frozen):
    task_arithmetic: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    """lambdas of the task-arithmetic baseline (the experts' summed task vectors times lambda, added to the base): each is scored before the search (raced for the best under fitness.racing) and the best on the search items is kept beside the experts; [] skips it (parameter and fw_pool spaces with a base_model only)"""

    uniform_soup: bool = True
    """score the uniform soup (every model at the same weight, a linear merge) as the bar in a parameter space without a base_model; false skips it"""

    @field_validator("task_arithmetic")
    @classmethod
    def _lambdas(cls, v: list[float]) -> list[float]:
        if any(not 0 < x <= 10 for x in v) or len(set(v)) != len(v):
            raise ValueError(
                f"{v}: give distinct lambdas in (0, 10], e.g. [0.25, 0.5, 0.75, 1.0], or [] "
                "to skip the baseline"
            )
        return v


class EvaluationConfig(_Frozen):
    timeout_s: float | None = Field(600.0, gt=0)
    """a candidate slower than this many seconds is recorded FAIL (null: no limit)"""
    device: str = "cpu"
    """where candidates are merged and scored: cpu, cuda or cuda:N"""
    # Ray workers (workers > 1 or ray_address): resources per worker; gpus_per_worker > 1 splits
    # the resident model over that many GPUs by layers; dtype "auto" = bfloat16 on GPU.
    gpus_per_worker: float = Field(0.0, ge=0)
    """Ray workers: GPUs per worker; more than 1 splits the model over them by layers"""
    cpus_per_worker: float = Field(1.0, gt=0)
    """Ray workers: CPU cores reserved per worker"""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype of the resident model; auto = bfloat16 on GPU, float32 on CPU"""
    # Memory for what does not change between candidates (sorted |task vector| for TIES-style
    # top-k, seeded DARE/DELLA draws), per worker, as a multiple of the resident experts' bytes.
    # It makes a TIES/DARE candidate ~2-5x cheaper; 0 turns it off (7B experts: 1.0 is ~1x their
    # float32 size again, so size it to what the node can spare).
    stats_cache: float = Field(1.0, ge=0)
    """per-worker cache of TIES/DARE statistics, as a multiple of the experts' bytes (0: off)"""
    # Unset: automatic (evomerge/workers/threads.py): the serial evaluator takes OMP_NUM_THREADS
    # when it is set, else the cores that are free when the search starts; a Ray worker
    # floor(cpus_per_worker).
    threads: int | None = Field(None, ge=1)
    """torch threads per worker (null: automatic, never more than the free cores; the serial evaluator takes OMP_NUM_THREADS when it is set)"""


class ExperimentConfig(_Frozen):
    name: str = "experiment"
    """a label for status and reports"""
    models: list[str]
    """the experts: Hugging Face model folders or zoo:<zoo>/<model> names"""
    base_model: str | None = None
    """the model task vectors are taken against (task-vector operators, fw_pool)"""
    space: SpaceConfig
    """the search space: a preset name, {preset: NAME, <overrides>} or a mapping (below)"""
    fitness: FitnessConfig
    """what a candidate scores: a suite name, a suite YAML path or a mapping (below)"""
    driver: DriverConfig = Field(default_factory=DriverConfig)
    """the search algorithm and its options"""
    budget: BudgetConfig
    """when the search stops (give max_evals and/or max_seconds)"""
    seed: int = 0
    """seeds the driver, DARE/DELLA masks and subsampling: same seed, same run"""
    workers: int = Field(1, ge=1)
    """1: evaluate in process; N > 1: N Ray workers on loopback"""
    ray_address: str | None = None
    """join a running Ray cluster at HOST:PORT instead of starting one"""
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    """what the run keeps of its best models"""
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """how each candidate is evaluated"""
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    """what the winner is shown against besides the experts and the base"""
    recipe_paths: list[str] = Field(default_factory=list)
    """extra folders where recipe:<digest> references resolve (merges of merges)"""
    base_dir: str = "."  # folder of the experiment file: relative paths are resolved from it
    """set by evomerge to the experiment file's folder; do not write it"""

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if not self.models:
            raise ValueError("models is empty; list the expert models (paths or zoo:<zoo>/<m>)")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models {self.models} repeat a model; list each once")
        return self

    # ---- identity -----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def structural_dict(self) -> dict[str, Any]:
        full = self.model_dump(mode="json")
        return {k: full[k] for k in STRUCTURAL_FIELDS}

    def structural_hash(self) -> str:
        text = json.dumps(self.structural_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def structural_diff(self, other: ExperimentConfig) -> list[str]:
        """Names of the structural fields that differ between two configs."""
        a, b = self.structural_dict(), other.structural_dict()
        return [k for k in STRUCTURAL_FIELDS if a[k] != b[k]]

    # ---- resolution -----------------------------------------------------------------------------
    def resolve_path(self, p: str) -> str:
        """A path relative to the experiment file's folder (absolute, ~ and zoo: left alone)."""
        if p.startswith(ZOO_PREFIX) or p.startswith("recipe:"):
            return p
        path = Path(p).expanduser()
        if not path.is_absolute():
            path = Path(self.base_dir) / path
        return str(path.resolve())


# ---- loading ------------------------------------------------------------------------------------
def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read an experiment YAML; ``overrides`` maps dotted keys (``budget.max_evals``) to values
    applied before validation (the CLI's --max-evals, --seed, --workers)."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{p}: experiment file not found")
    data = read_yaml(p.read_text(), str(p))
    if not isinstance(data, dict):
        raise UserInputError(f"{p}: expected a mapping at the top level")
    if "base_dir" in data:
        raise UserInputError(f"{p}: 'base_dir' is set by evomerge (the file's folder); remove it")
    data["base_dir"] = str(p.resolve().parent)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return parse_experiment(data, origin=str(p))


def parse_experiment(data: dict[str, Any], *, origin: str = "experiment") -> ExperimentConfig:
    """Validate ``data`` after looking up the files it names (the space preset, the fitness
    suite) and filling the seeds and paths that follow from the experiment: the validators
    themselves only validate."""
    try:
        return ExperimentConfig.model_validate(_resolve_parts(data))
    except ValidationError as err:
        raise UserInputError(format_validation_error(err, origin, ExperimentConfig)) from None


def experiment_from_json(text: str, *, origin: str = "stored config") -> ExperimentConfig:
    return parse_experiment(json.loads(text), origin=origin)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for k in parents:
        child = node.get(k)
        node[k] = dict(child) if isinstance(child, dict) else {}
        node = node[k]
    node[leaf] = value


# ---- parts --------------------------------------------------------------------------------------
def _resolve_parts(data: Any) -> Any:
    """The space and fitness as mappings: a preset or suite name read from its file, the seed
    filled in where the experiment's applies, hybrid file references made absolute."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    base_dir = Path(data.get("base_dir") or ".")
    seed = data.get("seed", 0)
    if "space" in data:
        data["space"] = _resolve_space(data["space"], base_dir, seed)
    if "fitness" in data:
        data["fitness"] = _resolve_fitness(data["fitness"], base_dir, seed)
    return data


def _resolve_space(raw: Any, base_dir: Path, seed: int) -> Any:
    from evomerge.spaces.presets import load_space_preset

    if isinstance(raw, BaseModel):
        return raw
    extra = [base_dir, base_dir / "search_spaces", base_dir.parent / "search_spaces"]
    if isinstance(raw, str):
        cfg = load_space_preset(raw, extra_dirs=extra)
    elif isinstance(raw, dict) and "preset" in raw:
        rest = {k: v for k, v in raw.items() if k != "preset"}
        cfg = load_space_preset(raw["preset"], rest, extra_dirs=extra)
    elif isinstance(raw, dict):
        cfg = parse_space_config(raw, origin="space")
    else:
        raise UserInputError("space: give a preset name, {preset: NAME, ...} or a mapping")
    update: dict[str, Any] = {}
    if "seed" not in cfg.model_fields_set and "seed" in type(cfg).model_fields:
        update["seed"] = seed
    if cfg.kind == "hybrid":  # file references are relative to the experiment, not the cwd
        if not cfg.winner.startswith("recipe:"):
            update["winner"] = str((base_dir / Path(cfg.winner).expanduser()).resolve())
        if isinstance(cfg.partner, str) and not cfg.partner.startswith(ZOO_PREFIX):
            update["partner"] = str((base_dir / Path(cfg.partner).expanduser()).resolve())
    return cfg.model_copy(update=update) if update else cfg


def _resolve_fitness(raw: Any, base_dir: Path, seed: int) -> Any:
    if isinstance(raw, BaseModel):
        return raw
    if isinstance(raw, str):
        raw = _load_suite(raw, base_dir)
    if not isinstance(raw, dict):
        raise UserInputError("fitness: give a suite name, a suite YAML path or a mapping")
    cfg = parse_fitness_config(raw, origin="fitness")
    tasks = []
    for t in cfg.tasks:
        if t.kind == "lm_eval" and "subsample_seed" not in t.model_fields_set:
            t = t.model_copy(update={"subsample_seed": seed})
        tasks.append(t)
    return cfg.model_copy(update={"tasks": tasks})


def _load_suite(name: str, base_dir: Path) -> dict[str, Any]:
    """A fitness suite: a YAML path, or ``<name>`` found as fitness/<name>.yaml near the
    experiment, in the current directory or in the repository."""
    p = Path(name).expanduser()
    candidates = [p, base_dir / p] if p.suffix in (".yaml", ".yml") else []
    for root in (base_dir, base_dir.parent, Path.cwd(), Path(__file__).resolve().parents[1]):
        candidates += [root / "fitness" / f"{name}.yaml", root / "fitness" / name / "suite.yaml"]
    for c in candidates:
        if c.is_file():
            data = read_yaml(c.read_text(), str(c))
            if not isinstance(data, dict):
                raise UserInputError(f"{c}: a fitness suite must be a mapping")
            return data
    raise UserInputError(
        f"fitness: suite {name!r} not found (looked for fitness/{name}.yaml near the experiment, "
        "in the current directory and in the repository); give a path or an inline mapping"
    )
