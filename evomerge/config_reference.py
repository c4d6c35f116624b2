"""The experiment YAML reference (docs/config.md, ``evomerge schema``), generated from the
pydantic models so it cannot drift from what the loader accepts: every key with its type,
default and the one-line description its field docstring gives. A test regenerates the file and
compares."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from evomerge.type_names import type_name

HIDDEN = {"base_dir"}  # set by evomerge itself; load_experiment refuses it in a file
TOP_PARTS = {"space": "preset name or mapping", "fitness": "suite name or mapping"}

INTRO = """\
# Experiment YAML reference

Generated from the config models by `evomerge schema` (do not edit by hand; a test compares).
An experiment is one YAML file (`experiments/` has commented examples); unknown keys are
refused, and relative paths are resolved from the experiment file's folder.

`space` takes a preset name (`search_spaces/<name>.yaml`; `evomerge list presets`),
`{preset: NAME, <keys to override>}`, or a mapping with a `kind`. `fitness` takes a suite name
(`fitness/<name>.yaml`; `evomerge list suites`), a suite YAML path, a mapping, or the shorthand
`{python: path/to/file.py:function}`.

**Structural** keys (`models`, `base_model`, `space`, `fitness`, `driver`, `seed`) decide which
candidates are proposed and how they score: `evomerge resume --config` refuses a change to
them. The others (`budget`, `workers`, `ray_address`, `archive`, `evaluation`, `name`,
`recipe_paths`) may change between runs.
"""


def render() -> str:
    from evomerge.config import ExperimentConfig
    from evomerge.fitness.config import FitnessConfig
    from evomerge.spaces.config import _CLASSES as SPACE_CLASSES

    parts = [INTRO, "## Top level\n", _table(_rows(ExperimentConfig, ""))]
    parts.append("## space\n\nOne of these, chosen by `kind`.\n")
    for kind, cls in SPACE_CLASSES.items():
        parts += [f"### space kind `{kind}`\n", _doc(cls), _table(_rows(cls, "space."))]
    parts += ["## fitness\n", _table(_rows(FitnessConfig, "fitness."))]
    parts.append("Each entry of `fitness.tasks` is one of these, chosen by `kind`.\n")
    for cls in _task_classes():
        kind = cls.model_fields["kind"].default
        parts += [f"### task kind `{kind}`\n", _table(_rows(cls, "fitness.tasks[]."))]
    from evomerge.fitness.config import ConstraintConfig

    parts.append("Each entry of `fitness.constraints` (docs/fitness.md, Constraints):\n")
    parts += [_table(_rows(ConstraintConfig, "fitness.constraints[]."))]
    parts += [_driver_options()]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


def _task_classes() -> list[type[BaseModel]]:
    from evomerge.fitness.config import TaskConfig

    union = typing.get_args(TaskConfig)[0]
    return list(typing.get_args(union))


def _doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split()) + "\n" if doc else ""


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        if name in HIDDEN:
            continue
        key = prefix + name
        sub = _submodel(field.annotation)
        if key in TOP_PARTS:  # a name or a mapping, each kind in its own section below
            rows.append((key, TOP_PARTS[key], "required", field.description or ""))
            continue
        if sub is not None:
            optional = field.default is None  # an optional section: absent = off
            rows.append((key, "mapping", "null" if optional else "", field.description or ""))
            rows += _rows(sub, key + ".")
            continue
        typ = _LISTED.get(key) or type_name(field.annotation)
        rows.append((key, typ, _default(field), field.description or ""))
    return rows


_LISTED = {
    "fitness.tasks": "list of tasks (below)",
    "fitness.constraints": "list of constraints (below)",
    "fitness.constraints[].task": "a task (kinds above)",
}


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _submodel(args[0])  # an optional section (fitness.validation): its keys too
    return None


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return _show(field.default_factory())
    if field.default is PydanticUndefined:
        return "required"
    return _show(field.default)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return str(list(value))
    return repr(value) if isinstance(value, str) else str(value)


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, desc in rows:
        # a docstring wrapped over lines is one cell: a newline would end the table's row
        cells = [f"`{key}`", typ, f"`{default}`" if default else "", " ".join(desc.split())]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ---- driver.options --------------------------------------------------------------------------
def _driver_options() -> str:
    from evomerge.drivers import get_driver, list_drivers

    out = [
        "## driver.options\n",
        "Each driver's own options; the driver's module docstring cites its paper and says more. "
        "`n_members` is filled in from the space.\n",
    ]
    for name in list_drivers():
        cls = get_driver(name)
        rows = [(f"driver.options.{k}", t, d, h) for k, t, d, h in driver_options(cls)]
        out += [f"### driver `{name}` (`{cls.__module__}`)\n", _table(rows)]
    return "\n".join(out)


def driver_options(cls: type) -> list[tuple[str, str, str, str]]:
    """(option, type, default, meaning) of a driver: the fields of its ``options_cls``, the
    dataclass ``driver.options`` are parsed into, with the help each was declared with."""
    from evomerge.drivers.options import option_help

    hints = typing.get_type_hints(cls.options_cls)
    meaning = option_help(cls.options_cls)
    return [
        (f.name, type_name(hints[f.name]), _dc_default(f), meaning[f.name])
        for f in dataclasses.fields(cls.options_cls)
        if f.name != "n_members"  # filled in from the space
    ]


def _dc_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _show(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _show(f.default_factory())
    return "required"
