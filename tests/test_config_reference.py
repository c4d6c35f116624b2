"""docs/config.md is the generated experiment YAML reference: it must be current (regenerate
and compare), name every key the loader accepts with a meaning, and be what `evomerge schema`
prints. To refresh it: evomerge schema > docs/config.md"""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.config import ExperimentConfig
from evomerge.config_reference import HIDDEN, render
from evomerge.drivers import get_driver, list_drivers
from evomerge.drivers.options import option_help
from evomerge.fitness.config import FitnessConfig
from evomerge.spaces.config import _CLASSES

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _keys(text: str) -> dict[str, list[str]]:
    """key -> meanings of every table row (a key may appear under several kinds)."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"^\| `([^`]+)` \|.*\| ([^|]*) \|$", text, re.M):
        out.setdefault(m.group(1), []).append(m.group(2).strip())
    return out


def test_docs_config_md_is_current():
    assert DOC.read_text() == render(), "docs/config.md is stale: evomerge schema > docs/config.md"


def test_schema_command_prints_it():
    res = CliRunner().invoke(app, ["schema"])
    assert res.exit_code == 0 and res.output == DOC.read_text()


def test_every_key_is_listed_with_a_meaning():
    keys = _keys(render())
    assert all(all(meanings) for meanings in keys.values()), [
        k for k, v in keys.items() if not all(v)
    ]
    expected = [n for n in ExperimentConfig.model_fields if n not in HIDDEN]
    for part in ("driver", "budget", "archive", "evaluation"):
        sub = ExperimentConfig.model_fields[part].annotation
        expected += [f"{part}.{n}" for n in sub.model_fields]
    expected += [f"fitness.{n}" for n in FitnessConfig.model_fields]
    expected += [f"space.{n}" for cls in _CLASSES.values() for n in cls.model_fields]
    task_union = FitnessConfig.model_fields["tasks"].annotation.__args__[0].__args__[0]
    expected += [f"fitness.tasks[].{n}" for cls in task_union.__args__ for n in cls.model_fields]
    for name in list_drivers():
        cls = get_driver(name)
        opts = set(option_help(cls.options_cls)) - {"n_members"}
        expected += [f"driver.options.{o}" for o in opts]
    missing = sorted(set(expected) - set(keys))
    assert not missing, missing


def test_every_driver_option_has_a_meaning():
    from evomerge.config_reference import driver_options

    for name in list_drivers():
        rows = driver_options(get_driver(name))
        assert rows, name
        assert all(meaning for _, _, _, meaning in rows), (name, rows)
