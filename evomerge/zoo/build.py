"""Build a zoo: train its models on CPU and write one HF model folder per model plus ``zoo.json``.

Without ``out`` the zoo is cached under ``${EVOMERGE_CACHE:-~/.cache/evomerge}/zoo/<name>-<hash>``
where the hash covers the zoo's whole recipe (config, seed, quick flag, format version), so a
change to any of them builds afresh and an unchanged one is reused. Every build writes to a
temporary sibling folder first and is moved into place with ``os.replace``.

Concurrent builders (two searches starting at once on a cluster, each asking for the same zoo)
serialize on a lock file next to the target (``.<name>.lock``, an fcntl lock that dies with
its process: ``evomerge.io.lock``): the first builds, the others wait and then reuse its build.
The lock holder also removes temporary folders left by builders that were killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from evomerge.errors import UserInputError
from evomerge.io.cache import cache_root
from evomerge.io.lock import FileLock
from evomerge.zoo import pinned
from evomerge.zoo.cpu import deterministic_cpu
from evomerge.zoo.provenance import FORMAT_VERSION, training_libraries
from evomerge.zoo.specs import ZOOS, ZooSpec

MANIFEST = "zoo.json"


def list_zoos() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted(ZOOS)


def get_spec(name: str, quick: bool = False) -> ZooSpec:
    if name not in ZOOS:
        raise UserInputError(f"zoo {name!r} is unknown; valid: {', '.join(list_zoos())}")
    return ZOOS[name](quick)


def config_hash(name: str, *, seed: int = 0, quick: bool = False) -> str:
    spec = get_spec(name, quick)
    payload = {"spec": spec.to_json(), "seed": seed, "quick": quick, "format": FORMAT_VERSION}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _train(name: str, spec: ZooSpec, out: Path, *, seed: int, quick: bool, progress: bool):
    if pinned.native_requested():
        with deterministic_cpu(getattr(spec, "threads", 2)):
            return spec.build(out, seed=seed, progress=progress, **zoo_inputs(spec))
    return pinned.train_pinned(name, out, seed=seed, quick=quick, progress=progress)


def weights_digest(folder: str | Path) -> str:
    """sha256 over every model file's relative path and bytes: equal zoos, equal digests (what
    ``zoo build`` prints so that users on two machines can compare)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def zoo_inputs(spec: ZooSpec) -> dict[str, Path]:
    """The built models a zoo is trained from (a zoo of adapters names its base model as
    ``base_ref = "zoo:<zoo>/<model>"``), built here first and handed to ``spec.build``, so that
    no zoo module imports the model resolver (which imports this module)."""
    ref = getattr(spec, "base_ref", None)
    if ref is None:
        return {}
    zoo_name, _, model = ref.removeprefix("zoo:").partition("/")
    folder = Path(build(zoo_name))
    entry = load_manifest(folder)["models"][model]
    return {"base": (folder / entry.get("path", model)).resolve()}


def load_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserInputError(f"{path}: no zoo manifest; build the zoo with `evomerge zoo build`")
    return json.loads(path.read_text())


def _lock_path(target: Path) -> Path:
    # in the cache, not beside an explicit --out: one lock per target folder
    key = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "locks" / f"zoo-{key}.lock"


def build(
    name: str,
    out: Path | str | None = None,
    *,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
) -> Path:
    """Build zoo ``name`` (or reuse an identical earlier build) and return its folder.

    Two processes building the same folder at once: one builds, the other waits on a file lock
    and then finds the build done."""
    spec = get_spec(name, quick)
    digest = config_hash(name, seed=seed, quick=quick)
    target = Path(out) if out is not None else cache_root() / "zoo" / f"{name}-{digest}"
    if _is_built(target, digest):
        return target  # the common case takes no lock
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(target.parent / f".{target.name}.lock")

    def waiting(holder: str) -> None:
        if progress:
            print(f"zoo {name}: {holder} is building it; waiting to reuse it", file=sys.stderr)

    lock.acquire(on_wait=waiting)
    try:
        if _is_built(target, digest):
            return target  # another builder finished while we waited
        _build_locked(spec, name, digest, target, seed=seed, quick=quick, progress=progress)
    finally:
        lock.release()
    return target


def _is_built(target: Path, digest: str) -> bool:
    """True for a finished build of this recipe; refuses a folder that is not a zoo."""
    if (target / MANIFEST).is_file():
        return load_manifest(target).get("config_hash") == digest
    if target.exists() and any(target.iterdir()):
        raise UserInputError(f"{target}: folder exists and is not a zoo; choose an empty --out")
    return False


def _build_locked(spec, name, digest, target, *, seed, quick, progress) -> None:
    """Train into a temporary sibling and move it into place (the caller holds the lock)."""
    for old in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(old, ignore_errors=True)  # a killed builder's: no other builder runs
    if target.exists():
        shutil.rmtree(target)  # an older zoo build in the same place (or an empty folder)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    if progress:  # a first use can train for many minutes: say what is going on
        print(
            f"zoo {name}: building it into {target} (once: later runs reuse it)",
            file=sys.stderr,
            flush=True,
        )
    try:
        start = time.perf_counter()
        models = _train(name, spec, tmp, seed=seed, quick=quick, progress=progress)
        manifest = {
            "name": name,
            "config_hash": digest,
            "seed": seed,
            "quick": quick,
            "format_version": FORMAT_VERSION,
            "kind": spec.kind,
            "description": spec.description,
            "models": models,
            "tasks": spec.tasks,
            "targets": spec.targets,
            "task_folders": spec.task_folders,
            "config": spec.to_json(),
            "build_seconds": round(time.perf_counter() - start, 1),
            "kernels": pinned.kernels_label(),
            "libraries": training_libraries(),
            "weights_sha256": weights_digest(tmp),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"zoo {name}: built in {manifest['build_seconds']:.0f} s", file=sys.stderr)
