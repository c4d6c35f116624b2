"""The top-k archive of a run: ranking, atomic materialization on disk, eviction, resolution.

Members are the best ``top_k`` distinct recipes by fitness (ties: the earlier candidate wins, so
the archive never depends on timing). Each member is a HF model folder
``<run_dir>/archive/<digest>/`` written by the merge engine into a temporary folder and moved in
place with ``os.replace``: a reader sees a complete model or none. The loop writes new members
*before* committing the generation and evicts dropped members *after* it, so after a crash
``reconcile`` restores the folders to exactly what the store's archive table says.

``RecipeResolver`` maps ``recipe:<digest>`` to a folder: this run's archive first, then the
configured ``recipe_paths`` (archive folders, or run folders holding ``archive/``), so a later
search can merge an earlier search's winners (merges of merges, Sakana's PS+DFS hybrid).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from evomerge.errors import UserInputError
from evomerge.recipe import RECIPE_REF_PREFIX, Recipe
from evomerge.store import ArchiveEntry

ARCHIVE_DIR = "archive"
TMP_PREFIX = ".tmp-"

Writer = Callable[[Recipe, Path], None]


def rank_top_k(rows: Iterable[tuple[float, int, str]], top_k: int) -> list[ArchiveEntry]:
    """Best ``top_k`` distinct digests from (fitness, idx, digest) rows; NaN never enters."""
    best: dict[str, tuple[float, int]] = {}
    for fitness, idx, digest in rows:
        if fitness is None or math.isnan(fitness):
            continue
        old = best.get(digest)
        if old is None or (-fitness, idx) < (-old[0], old[1]):
            best[digest] = (fitness, idx)
    order = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))[:top_k]
    return [ArchiveEntry(rank=r, digest=d, idx=i, fitness=f) for r, (d, (f, i)) in enumerate(order)]


class Archive:
    def __init__(self, run_dir: str | Path, top_k: int, writer: Writer | None) -> None:
        self.root = Path(run_dir) / ARCHIVE_DIR
        self.top_k = top_k
        self.writer = writer

    def path(self, digest: str) -> Path:
        return self.root / digest

    def materialize(self, entries: Sequence[ArchiveEntry], recipes: dict[str, Recipe]) -> None:
        """Write every member whose folder is missing (atomically)."""
        if self.writer is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for e in entries:
            final = self.path(e.digest)
            if final.is_dir():
                continue
            tmp = self.root / f"{TMP_PREFIX}{e.digest}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            self.writer(recipes[e.digest], tmp)
            os.replace(tmp, final)

    def evict(self, entries: Sequence[ArchiveEntry]) -> None:
        """Remove folders of non-members and leftovers of interrupted writes: every hidden
        entry (``.tmp-*`` and the merge writer's ``..tmp-*``), since the run lock guarantees
        that no other process writes here."""
        if not self.root.is_dir():
            return
        keep = {e.digest for e in entries}
        for child in self.root.iterdir():
            if child.name.startswith(".") or (child.is_dir() and child.name not in keep):
                shutil.rmtree(child, ignore_errors=True)

    def reconcile(self, entries: Sequence[ArchiveEntry], recipes: dict[str, Recipe]) -> None:
        self.evict(entries)
        self.materialize(entries, recipes)


class RecipeResolver:
    """``recipe:<digest>`` -> a materialized model folder."""

    def __init__(self, roots: Sequence[str | Path]) -> None:
        self._given = [Path(r) for r in roots]

    @property
    def roots(self) -> list[Path]:
        # Looked at on each call, not once: a run folder made after this resolver (a fresh
        # search builds it before the folder exists) gains its archive/ during the search.
        return [p / ARCHIVE_DIR if (p / ARCHIVE_DIR).is_dir() else p for p in self._given]

    def __call__(self, ref: str) -> str:
        if not ref.startswith(RECIPE_REF_PREFIX):
            return ref
        digest = ref[len(RECIPE_REF_PREFIX) :]
        for root in self.roots:
            if (root / digest / "config.json").is_file():
                return str(root / digest)
        where = ", ".join(str(r) for r in self.roots) or "(none configured)"
        raise UserInputError(
            f"{ref}: no materialized model with this digest in {where}; add the run folder that "
            "archived it to the experiment's recipe_paths"
        )
