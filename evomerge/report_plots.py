"""The report's three plots (matplotlib, Agg backend, PNG at 110 dpi).

A failed candidate has no fitness: it is drawn as a mark on the x axis (where it happened),
never as a value; a failed baseline is named in the legend and not drawn. With
fitness.constraints every candidate is drawn at its objective fitness, feasible ones as small
filled dots and infeasible ones as hollow circles, and the curves follow the feasible ones only
(an infeasible candidate can never be the winner, however high it scores).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from evomerge.report_data import Row, best_and_median
from evomerge.store import Trial

DPI = 110
WINNER_COLORS = ["#d62728", "#ff7f0e", "#bcbd22"]  # #1, #2, #3 merges: warm
EXPERT_COLORS = ["#1f77b4", "#17becf", "#9467bd", "#2ca02c", "#8c564b", "#e377c2"]
BASE_COLOR = "#7f7f7f"
SIMPLE_COLOR = "#000000"  # the simple-merge baselines: task arithmetic, the uniform soup


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp")  # then rename: never a half-written PNG
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_fitness(
    trials: list[Trial],
    rows: list[Row],
    path: Path,
    infeasible: set[int] | None = None,
    partial: set[int] | None = None,
) -> Path | None:
    import matplotlib.pyplot as plt

    if not trials:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    draw_fitness(ax, trials, rows, infeasible, partial)
    return _save(fig, path)


def draw_fitness(
    ax,
    trials: list[Trial],
    rows: list[Row],
    infeasible: set[int] | None = None,
    partial: set[int] | None = None,
) -> None:
    """``infeasible``: the idx of the successful candidates that broke a constraint; None when
    the run has no fitness.constraints (then candidates are not drawn one by one).
    ``partial``: the idx of the candidates racing stopped early (``best_and_median``)."""
    xs, best, med = best_and_median(trials, infeasible, partial)
    levels = [r for r in rows if r.kind != "merge" and r.fitness is not None]
    which = "" if infeasible is None else " (feasible)"
    scored = " (fully scored)" if partial else ""
    if infeasible is not None:
        _mark_feasibility(ax, trials, infeasible)
    if any(math.isfinite(v) for v in best):
        ax.plot(
            xs,
            best,
            label=f"best so far{which}{scored}",
            lw=2,
            marker="o",
            ms=3,
            color=WINNER_COLORS[0],
        )
        ax.plot(xs, med, label=f"generation median{which}", lw=1, ls="--", color="#444")
    elif infeasible:
        box = {"facecolor": "white", "edgecolor": "#999"}
        ax.text(0.5, 0.6, "no feasible candidate", transform=ax.transAxes, ha="center", bbox=box)
    else:
        box = {"facecolor": "white", "edgecolor": "#999"}
        ax.text(0.5, 0.6, "no candidate succeeded", transform=ax.transAxes, ha="center", bbox=box)
        if not levels:
            ax.set_yticks([])  # no fitness at all: a y scale would invent one
    for r in levels:  # the baselines as levels to beat
        label = f"{r.name} {r.fitness:.3f}"
        ax.axhline(r.fitness, lw=0.8, ls=":", color=_color(r, rows), label=label)
    _mark_failures(ax, [i + 1 for i, t in enumerate(trials) if not t.ok])
    ax.set_xlim(0, len(trials) + 1)
    ax.set_title("fitness during the search")
    ax.set_xlabel("evaluations (candidates told)")
    ax.set_ylabel("fitness (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)


def _mark_feasibility(ax, trials: list[Trial], infeasible: set[int]) -> None:
    """Each successful candidate at (its position, its objective fitness): filled when it met
    every constraint, hollow when it did not (its fitness is real, but it cannot win)."""
    spots = [(i + 1, t) for i, t in enumerate(trials) if t.ok and math.isfinite(t.fitness)]
    good = [(x, t.fitness) for x, t in spots if t.idx not in infeasible]
    bad = [(x, t.fitness) for x, t in spots if t.idx in infeasible]
    if good:
        gx, gy = zip(*good, strict=True)
        label = f"feasible candidate ({len(good)})"
        ax.plot(gx, gy, "o", ms=3, color=BASE_COLOR, alpha=0.6, ls="none", label=label)
    if bad:
        bx, by = zip(*bad, strict=True)
        label = f"infeasible candidate ({len(bad)})"
        ax.plot(bx, by, "o", ms=5, mfc="none", mec="#9467bd", mew=1, ls="none", label=label)


def _mark_failures(ax, xs: list[int]) -> None:
    """Ticks on the x axis where candidates failed: a failure has no fitness to plot."""
    if not xs:
        return
    label = f"failed candidate ({len(xs)})"
    ax.plot(
        xs,
        [0.0] * len(xs),
        "|",
        ms=10,
        mew=1.5,
        color="black",
        clip_on=False,
        transform=ax.get_xaxis_transform(),
        label=label,
    )


def _color(row: Row, rows: list[Row]) -> str:
    same = [r for r in rows if r.kind == row.kind]
    i = same.index(row)
    if row.kind == "merge":
        return WINNER_COLORS[i % len(WINNER_COLORS)]
    if row.kind == "base":
        return BASE_COLOR
    if row.kind == "simple":
        return SIMPLE_COLOR
    return EXPERT_COLORS[i % len(EXPERT_COLORS)]


def plot_tasks(rows: list[Row], tasks: list[str], path: Path) -> Path | None:
    """Grouped bars: one group per task, one bar per model (merges, experts, base)."""
    import matplotlib.pyplot as plt

    drawn = [r for r in rows if r.scores]
    if not drawn or not tasks:
        return None
    fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(tasks) * len(drawn) + 2), 4))
    draw_tasks(ax, rows, tasks)
    return _save(fig, path)


def draw_tasks(ax, rows: list[Row], tasks: list[str]) -> None:
    drawn = [r for r in rows if r.scores]
    width = 0.8 / len(drawn)
    for i, r in enumerate(drawn):
        vals = [r.scores.get(k, math.nan) for k in tasks]
        hatch = {"base": "//", "simple": ".."}.get(r.kind)
        xs = np.arange(len(tasks)) + i * width
        bars = ax.bar(
            xs,
            vals,
            width,
            label=r.name,
            color=_color(r, rows),
            hatch=hatch,
            edgecolor="white",
            lw=0.5,
        )
        ax.bar_label(bars, labels=_bar_texts(vals, len(tasks) * len(drawn)), fontsize=6)
    notes = [f"{r.name}: failed, not drawn" for r in rows if not r.scores]
    if not any(r.kind == "merge" for r in rows):
        notes.insert(0, "no merge succeeded")
    for note in notes:  # legend lines without a bar: failures are not zeros
        ax.plot([], [], " ", label=note)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=20, ha="right")
    ax.set_title("score per task: best merges vs the baselines")
    ax.set_xlabel("task")
    ax.set_ylabel("score (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)


def _bar_texts(vals: list[float], n_bars: int) -> list[str]:
    """Every value when the bars are few; otherwise only zeros, which have no bar to see."""
    few = n_bars <= 24
    return ["" if math.isnan(v) else f"{v:.2f}" if few or v == 0 else "" for v in vals]


def plot_genes(names: list[str], values: list[float], title: str, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    from evomerge.report_data import gene_matrix

    if not names:
        return None
    rows, cols, m = gene_matrix(names, values)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(cols) + 3), max(3, 0.3 * len(rows) + 1.5)))
    im = ax.imshow(m, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("layer group" if "scale" not in title else "hop")
    ax.set_title(title, fontsize=9)
    if m.size <= 200:
        for (i, j), v in np.ndenumerate(m):
            if not np.isnan(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=_ink(im.cmap(im.norm(v))),
                )
    bar = fig.colorbar(im, ax=ax)
    bar.set_label("input scale" if "scale" in title else "gene value (the parameter's units)")
    return _save(fig, path)


def _ink(rgba) -> str:
    """Black on light cells, white on dark ones (relative luminance, sRGB weights)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"
