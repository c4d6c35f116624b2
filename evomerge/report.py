"""``evomerge report DIR --out OUT``: PNG plots and a markdown/HTML summary of one run.

* ``fitness.png``   best-so-far and per-generation median fitness against evaluations, the
                    experts and the base as levels, failed candidates marked on the x axis;
                    with fitness.constraints each candidate as a dot, hollow when infeasible,
                    and the curves over the feasible ones;
* ``tasks.png``     per-task scores of the top-k archive against each expert and the base;
* ``genes.png``     the best recipe's genes per layer: a (model x param) by layer-group heat map
                    for parameter space, the layer path with its input scales for data flow;
* ``report.md`` and ``report.html`` (the same blocks): why the search stopped, the per-task
  table, the failures grouped by reason, and the three plots.

Reads the store read-only, so it can run while the search is still writing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from evomerge.failures import FailureGroup, run_failure_groups
from evomerge.fitness.constraints import Constraints, infeasible, summary_lines
from evomerge.report_data import (
    Row,
    best_and_median,
    best_genes,
    item_count,
    model_rows,
    outside_budget,
    task_names,
)
from evomerge.report_doc import (
    Block,
    Bullets,
    Heading,
    Image,
    Para,
    Table,
    code,
    to_html,
    to_markdown,
)
from evomerge.stop_reason import StopRecord, read_stop
from evomerge.store import RunStore, Trial
from evomerge.validation import ESTIMATE_NOTE, Ranking, ranking
from evomerge.validation_baselines import (
    baseline_notes,
    baseline_scores,
    score_text,
)

__all__ = ["best_and_median", "write_report"]


def write_report(run_dir: str | Path, out: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from evomerge.config import experiment_from_json
    from evomerge.report_plots import plot_fitness, plot_genes, plot_tasks

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunStore.open(run_dir, readonly=True) as store:
        trials, archive = store.trials(), store.archive()
        baselines = store.search_baselines()
        cfg_json, stop, groups = store.config_json(), read_stop(store), run_failure_groups(store)
        ranked = ranking(store)
        experts = baseline_scores(store)
        items, partial, outside = store.item_evals(), store.partial_idx(), outside_budget(store)
    by_idx = {t.idx: t for t in trials}
    top = [by_idx[e.idx] for e in archive if e.idx in by_idx]
    rows = model_rows(top, baselines, partial)
    tasks = task_names(rows)
    genes = best_genes(top[0] if top else None, cfg_json, run_dir)
    exp = experiment_from_json(cfg_json)
    cons = Constraints.of(exp.fitness)
    plots = [
        plot_fitness(trials, rows, out / "fitness.png", _infeasible(cons, trials), partial),
        plot_tasks(rows, tasks, out / "tasks.png"),
        plot_genes(*genes, out / "genes.png"),
    ]
    plots = [p for p in plots if p is not None]
    facts = _facts(run_dir, json.loads(cfg_json), trials, top, stop, partial)
    racing = exp.fitness.racing
    count = item_count(items, exp.budget.max_item_evals, racing, len(partial), outside)
    facts += [f"item evaluations: {count}"]
    facts += summary_lines(cons, trials) if cons is not None else []
    if ranked.enabled:
        facts.append(_winner_fact(ranked))
    facts += baseline_notes(ranked, experts, cons is not None, baselines)
    blocks = _blocks(run_dir, facts, rows, tasks, groups, plots, ranked, experts)
    _write(out / "report.md", to_markdown(blocks))
    _write(out / "report.html", to_html(blocks, f"evomerge run {run_dir}"))
    return [*plots, out / "report.md", out / "report.html"]


def _write(path: Path, text: str) -> None:
    """Temp file, then rename: a browser refreshing the report never reads half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _facts(
    run_dir, cfg: dict, trials: list[Trial], top: list[Trial], stop, partial: set[int]
) -> list[str]:
    n_fail = sum(1 for t in trials if not t.ok)
    n_eval = sum(1 for t in trials if t.reused_from is None)
    space = cfg.get("space", {})
    facts = [
        f"experiment: {code(cfg.get('name', '?'))}, driver {code(cfg['driver']['name'])}, "
        f"space {code(space.get('kind', space.get('preset', '?')))}, seed {cfg.get('seed')}",
        f"stopped: {_stop_text(stop)}",
        f"candidates: {len(trials)} (evaluated {n_eval}, reused {len(trials) - n_eval},"
        f" failed {n_fail}); generations: {len({t.generation for t in trials})}",
    ]
    if top:
        est = ESTIMATE_NOTE if top[0].idx in partial else ""  # racing.archive_places 0
        facts.append(f"best fitness: {top[0].fitness:.4f}{est} ({code(top[0].digest[:12])})")
    else:
        facts.append("best fitness: none, no candidate succeeded")
    return facts


def _infeasible(cons: Constraints | None, trials: list[Trial]) -> set[int] | None:
    """The successful candidates that broke a constraint, reused ones included (each is a dot
    of the plot); None: the run has no constraints."""
    return None if cons is None else infeasible(cons, trials)


def _stop_text(stop) -> str:
    if stop is None:
        return "not recorded (a store written by an older evomerge)"
    if stop.reason == "baselines_failed":  # the detail is an error text: keep it verbatim
        return f"{StopRecord(stop.reason).describe()}: {code(stop.detail)}"
    return stop.describe()


def _winner_fact(ranked: Ranking) -> str:
    if not ranked.members:
        return "validation: no archived model to score"
    w = ranked.members[0]
    if ranked.by != "validation score":
        return f"validation: {ranked.winner_note()} (`evomerge resume` scores them)"
    return (
        f"{ranked.winner_note()}: {code(w.digest[:12])}, validation {score_text(w.validation)}, "
        f"search fitness {score_text(w.fitness)}"
        + w.estimate_note
        + (f", gap {w.gap:+.4f}" if w.comparable else " (another metric: no gap)")
    )


def _validation_table(ranked: Ranking, experts: dict | None = None) -> list[Block]:
    """Search fitness against the held-out score per archived model (the gap is selection),
    then the experts and the base on the same items: what the winner has to beat."""
    body = [
        [
            f"#{i + 1} {code(m.digest[:12])}",
            score_text(m.fitness) + m.estimate_note,
            score_text(m.validation) + m.stop_note if m.validated else "-",
            f"{m.gap:+.4f}" if m.validated and math.isfinite(m.gap) else "-",
        ]
        for i, m in enumerate(ranked.members)
    ]
    for label, (fit, val) in (experts or {}).items():
        gap = fit - val if ranked.comparable and None not in (fit, val) else math.nan
        row = [
            label,
            score_text(fit),
            score_text(val, "-"),
            f"{gap:+.4f}" if math.isfinite(gap) else "-",
        ]
        body.append(row)
    gap = " (gap = search - validation)" if ranked.comparable else ""  # two metrics: none
    then = ", then the baselines" if experts else ""
    head = Heading(f"Validation: archive ranked by {ranked.by}{then}{gap}")
    return [head, Table(["model", "search fitness", "validation", "gap"], body)]


def _blocks(run_dir, facts, rows, tasks, groups, plots, ranked=None, experts=None) -> list[Block]:
    blocks: list[Block] = [Heading(f"evomerge run {code(run_dir)}", 1), Bullets(facts)]
    if ranked is not None and ranked.enabled:
        blocks += _validation_table(ranked, experts)
    blocks += [Heading("Per task: best merges and the baselines"), _task_table(rows, tasks)]
    if not tasks:
        blocks.append(Para("No task scores: every model failed (reasons below)."))
    blocks += _failure_blocks(groups)
    if plots:
        blocks.append(Heading("Plots"))
        blocks += [Image(p.name, p.stem) for p in plots]
    return blocks


def _task_table(rows: list[Row], tasks: list[str]) -> Table:
    body = []
    for r in rows:
        name = f"{r.name} {code(r.digest[:12])}" if r.digest else r.name
        cells = [score_text(r.scores[k]) if k in r.scores else "-" for k in tasks]
        body.append([name, score_text(r.fitness) + (ESTIMATE_NOTE if r.estimate else ""), *cells])
    return Table(["model", "fitness", *(code(t) for t in tasks)], body)


def _failure_blocks(groups: list[FailureGroup]) -> list[Block]:
    if not groups:
        return [Heading("Failures"), Para("None: every model scored.")]
    total = sum(g.count for g in groups)
    table = Table(
        ["count", "first failed", "reason"],
        [[str(g.count), g.first, code(g.reason)] for g in groups],
    )
    return [Heading(f"Failures by reason ({total})"), table]
