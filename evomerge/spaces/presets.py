"""Search-space presets: ``search_spaces/<name>.yaml`` files validated into a SpaceConfig.

``load_space_preset(name_or_path)`` accepts a path to a YAML file, or a bare name (``ps_dare_ties``
or ``ps_dare_ties.yaml``) looked up in these folders, first hit wins:

1. ``extra_dirs`` given by the caller (e.g. the experiment file's folder and its search_spaces/);
2. each folder in ``$EVOMERGE_SEARCH_SPACES`` (``os.pathsep``-separated), for a user's own set;
3. ``./search_spaces`` in the current directory (a project that keeps its presets beside it);
4. the repository's ``search_spaces/``, found relative to the package (``evomerge/..``): a
   source checkout or an editable install;
5. package data ``evomerge/_data/search_spaces/``: what an installed wheel carries (the build
   must copy the repo's ``search_spaces/*.yaml`` there; a source checkout does not need it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from evomerge.errors import UserInputError
from evomerge.io.yaml_read import read_yaml
from evomerge.spaces.config import SpaceConfig, parse_space_config

ENV_VAR = "EVOMERGE_SEARCH_SPACES"
SUFFIXES = (".yaml", ".yml")


def preset_dirs(extra_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """The folders a bare preset name is looked up in, in order."""
    dirs = [Path(d) for d in extra_dirs]
    dirs += [Path(d) for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    dirs.append(Path.cwd() / "search_spaces")
    dirs.append(Path(__file__).resolve().parents[2] / "search_spaces")
    try:
        dirs.append(Path(str(resources.files("evomerge") / "_data" / "search_spaces")))
    except (ModuleNotFoundError, TypeError):  # zip imports have no real folder
        pass
    return dirs


def available_presets(extra_dirs: Sequence[str | Path] = ()) -> list[str]:
    """Preset names in the lookup folders. The experiment's own folder is one of them, and it
    holds experiments too: only a YAML whose top level has a space ``kind`` is a preset."""
    names: set[str] = set()
    for d in preset_dirs(extra_dirs):
        if d.is_dir():
            names.update(p.stem for p in d.iterdir() if p.suffix in SUFFIXES and _is_preset(p))
    return sorted(names)


def _top_level(path: Path) -> dict:
    """A YAML file's top-level mapping ({} when it is unreadable or not a mapping)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_experiment(path: Path) -> bool:
    """A YAML with a ``space`` and no space ``kind`` at its top level: an experiment (a preset
    with a wrong kind is still found, and refused with that kind named)."""
    data = _top_level(path)
    return "space" in data and "kind" not in data


def _is_preset(path: Path) -> bool:
    from evomerge.spaces.config import KINDS

    return _top_level(path).get("kind") in KINDS


def find_preset(name_or_path: str | Path, extra_dirs: Sequence[str | Path] = ()) -> Path:
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.suffix in SUFFIXES and (p.is_file() or os.sep in s or "/" in s):
        if not p.is_file():
            raise UserInputError(f"search space file {p} not found")
        return p
    if os.sep in s or "/" in s:
        raise UserInputError(f"search space {s!r}: a path must name a .yaml file")
    stem = p.stem if p.suffix in SUFFIXES else s
    for d in preset_dirs(extra_dirs):
        for suffix in SUFFIXES:
            cand = d / f"{stem}{suffix}"
            # the experiment's own folder is searched first and holds experiments too: an
            # experiment named hybrid.yaml asking for preset hybrid must not find itself
            if cand.is_file() and not _is_experiment(cand):
                return cand
    raise UserInputError(
        f"unknown search space preset {s!r}; available: {', '.join(available_presets(extra_dirs))}"
        f" (or give a path to a YAML file)"
    )


def load_space_preset(
    name_or_path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    extra_dirs: Sequence[str | Path] = (),
) -> SpaceConfig:
    """Read a preset, apply ``overrides`` (top-level keys replace the preset's), validate."""
    path = find_preset(name_or_path, extra_dirs)
    data = read_yaml(path.read_text(), str(path))
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping at the top level")
    data = {**data, **dict(overrides or {})}
    return parse_space_config(data, origin=str(path))
