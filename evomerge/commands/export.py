"""``evomerge export DIR --out FILE [--format evomerge|mergekit] [--rank K | --task-arithmetic |
--soup]``: the rank-K archive member's recipe (rank 1: the winner, by validation score when the
run has one), or the run's task-arithmetic or uniform-soup baseline."""

from __future__ import annotations

from pathlib import Path

from evomerge.commands.console import out
from evomerge.errors import UserInputError
from evomerge.recipe import Recipe


def export(
    run_dir: Path,
    out_file: Path,
    fmt: str = "evomerge",
    rank: int = 1,
    task_arithmetic: bool = False,
    soup: bool = False,
) -> int:
    """``task_arithmetic``: the run's task-arithmetic baseline (its chosen lambda) instead of
    an archive member, for a run whose note says it beats the winner; ``soup``: its
    uniform-soup baseline (a run without a base model)."""
    from evomerge.fitness.constraints import run_is_constrained
    from evomerge.store import RunStore
    from evomerge.validation import member_line, ranking

    if fmt not in ("evomerge", "mergekit"):
        raise UserInputError(f"--format {fmt!r}: use evomerge or mergekit")
    if task_arithmetic and soup:
        raise UserInputError("--task-arithmetic and --soup name two baselines: give one")
    if task_arithmetic or soup:
        flag = "--task-arithmetic" if task_arithmetic else "--soup"
        if rank != 1:
            raise UserInputError(f"--rank picks an archive member: drop it with {flag}")
        return _export_baseline(run_dir, Path(out_file), fmt, flag)
    with RunStore.open(run_dir, readonly=True) as st:
        ranked = ranking(st)  # by validation score when the run has one
        archive = ranked.members
        if not archive and run_is_constrained(st):
            raise UserInputError(
                f"{run_dir}: no candidate met every bound of fitness.constraints, so the "
                "archive is empty; loosen a bound and search again (evomerge status shows them)"
            )
        if not 1 <= rank <= len(archive):
            raise UserInputError(
                f"--rank {rank}: the archive of {run_dir} holds {len(archive)} models (1 = best)"
            )
        trial = st.trial(archive[rank - 1].idx)
    recipe = Recipe.from_yaml(trial.recipe_yaml, origin=f"{run_dir} candidate {trial.idx}")
    text = recipe.to_yaml() if fmt == "evomerge" else _to_mergekit(recipe)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text)
    if ranked.enabled:
        m = archive[rank - 1]
        out.print(
            f"wrote {out_file} ({fmt}; rank {rank} by {ranked.by}, {member_line(m)}, "
            f"digest {trial.digest[:12]}; {ranked.winner_note()})"
        )
        return 0
    out.print(
        f"wrote {out_file} ({fmt}; rank {rank}, fitness {trial.fitness:.4f}, "
        f"digest {trial.digest[:12]})"
    )
    return 0


def _export_baseline(run_dir: Path, out_file: Path, fmt: str, flag: str) -> int:
    from evomerge.baselines import EXPORT_FLAGS
    from evomerge.store import RunStore
    from evomerge.validation_baselines import baseline_scores, score_text

    with RunStore.open(run_dir, readonly=True) as st:
        find, missing = EXPORT_FLAGS[flag]
        found = find(st.search_baselines())
        scores = baseline_scores(st)
    if found is None:
        raise UserInputError(f"{flag}: {run_dir} {missing}; export an archive member with --rank")
    label, entry = found
    recipe = Recipe.from_yaml(entry["recipe"], origin=f"{run_dir} baseline {label!r}")
    text = recipe.to_yaml() if fmt == "evomerge" else _to_mergekit(recipe)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text)
    held_out = scores.get(label, (None, None))[1]
    val = "" if held_out is None else f", validation {score_text(held_out)}"
    out.print(
        f"wrote {out_file} ({fmt}; {label}, search fitness {score_text(entry['fitness'])}{val}, "
        f"digest {recipe.digest()[:12]})"
    )
    return 0


def _to_mergekit(recipe: Recipe) -> str:
    from evomerge.recipe_mergekit import to_mergekit_yaml  # a clear error names what it lacks

    return to_mergekit_yaml(recipe)
