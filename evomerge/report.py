"""``evomerge report DIR --out OUT``: PNG plots and a markdown/HTML summary of one run.

* ``fitness.png``   best-so-far and per-generation median fitness against evaluations;
* ``tasks.png``     per-task scores of the top-k archive (and of the experts, when known);
* ``genes.png``     the best recipe's genes per layer: a (model x param) by layer-group heat map
                    for parameter space, the layer path with its input scales for data flow;
* ``report.md`` and ``report.html``, which embed the three.

Reads the store read-only, so it can run while the search is still writing.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from statistics import median

import numpy as np

from evomerge.store import RunStore, Trial


def write_report(run_dir: str | Path, out: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunStore.open(run_dir, readonly=True) as store:
        trials = store.trials()
        archive = store.archive()
        baselines = json.loads(store.get_meta("baselines") or "{}")
        cfg_json = store.config_json()
    by_idx = {t.idx: t for t in trials}
    top = [by_idx[e.idx] for e in archive if e.idx in by_idx]
    files = [
        _plot_fitness(trials, out / "fitness.png"),
        _plot_tasks(top, baselines, out / "tasks.png"),
        _plot_genes(top[0] if top else None, cfg_json, run_dir, out / "genes.png"),
    ]
    files = [f for f in files if f is not None]
    md = _markdown(run_dir, trials, top, baselines, files)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_html(md, files))
    return [*files, out / "report.md", out / "report.html"]


# ---- plots --------------------------------------------------------------------------------------
def best_and_median(trials: list[Trial]) -> tuple[list[int], list[float], list[float]]:
    """(evaluations so far, best so far, generation median) at each generation's end."""
    xs, best, med = [], [], []
    running, count = -math.inf, 0
    gens = sorted({t.generation for t in trials})
    for g in gens:
        rows = [t for t in trials if t.generation == g]
        count += len(rows)
        ok = [t.fitness for t in rows if t.ok]
        if ok:
            running = max(running, max(ok))
        xs.append(count)
        best.append(running if math.isfinite(running) else math.nan)
        med.append(median(ok) if ok else math.nan)
    return xs, best, med


def _plot_fitness(trials: list[Trial], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    if not trials:
        return None
    xs, best, med = best_and_median(trials)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(xs, best, label="best so far", lw=2)
    ax.plot(xs, med, label="generation median", lw=1, ls="--")
    fails = [i + 1 for i, t in enumerate(trials) if not t.ok]
    if fails:
        y0 = np.nanmin([v for v in med + best if not math.isnan(v)] or [0.0])
        ax.scatter(fails, [y0] * len(fails), marker="x", color="red", s=12, label="failed")
    ax.set_xlabel("evaluations (candidates told)")
    ax.set_ylabel("fitness")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_tasks(top: list[Trial], baselines: dict, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    rows = [(f"#{i + 1} {t.digest[:8]}", t.scores) for i, t in enumerate(top)]
    rows += [(name, b.get("scores", {})) for name, b in baselines.items()]
    tasks = sorted({k for _, s in rows for k in s})
    if not rows or not tasks:
        return None
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(tasks) * max(1, len(rows)) / 3), 4))
    width = 0.8 / len(rows)
    for i, (label, scores) in enumerate(rows):
        vals = [scores.get(k, math.nan) for k in tasks]
        ax.bar(np.arange(len(tasks)) + i * width, vals, width, label=label)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=20, ha="right")
    ax.set_ylabel("score")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def gene_matrix(names: list[str], values: list[float]) -> tuple[list[str], list[str], np.ndarray]:
    """Rows = gene name without its layer part, columns = the layer part (2nd '/' field)."""
    rows: dict[str, None] = {}
    cols: dict[str, None] = {}
    cells = {}
    for n, v in zip(names, values, strict=True):
        parts = n.split("/")
        col = parts[1] if len(parts) > 2 else "all"
        row = "/".join(parts[:1] + parts[2:]) if len(parts) > 2 else n
        rows.setdefault(row, None)
        cols.setdefault(col, None)
        cells[(row, col)] = v
    m = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            m[i, j] = cells.get((r, c), np.nan)
    return list(rows), list(cols), m


def _plot_genes(best: Trial | None, cfg_json: str, run_dir, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    if best is None or not best.genes:
        return None
    names, values, title = _best_genes(best, cfg_json, run_dir)
    rows, cols, m = gene_matrix(names, values)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(cols) + 3), max(3, 0.3 * len(rows) + 1.5)))
    im = ax.imshow(m, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title(title, fontsize=9)
    if m.size <= 200:
        for (i, j), v in np.ndenumerate(m):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _best_genes(best: Trial, cfg_json: str, run_dir) -> tuple[list[str], list[float], str]:
    """Named, param-unit values of the best candidate's genes (raw genes when the space cannot
    be rebuilt, e.g. the models moved)."""
    x = np.asarray(best.genes, dtype=float)
    try:
        from evomerge.config import experiment_from_json
        from evomerge.session import build_space

        space = build_space(experiment_from_json(cfg_json), Path(run_dir))
        if hasattr(space, "path_hops"):
            hops = space.path_hops(x)
            names = [
                f"{space.pool_name(p).split('.L')[0]}/hop{k:02d}/scale"
                for k, (p, _) in enumerate(hops)
            ]
            return names, [s for _, s in hops], "best data-flow path: input scale per hop"
        vals = space.values(x) if hasattr(space, "values") else x
        return space.gene_names(), [float(v) for v in vals], "best recipe: gene values"
    except Exception:  # noqa: BLE001 - the plot falls back to raw genes
        return [f"g{i}" for i in range(len(x))], list(x), "best candidate: raw genes"


# ---- summary ----------------------------------------------------------------------------------
def _markdown(run_dir, trials, top, baselines, files) -> str:
    n_fail = sum(1 for t in trials if not t.ok)
    n_eval = sum(1 for t in trials if t.reused_from is None)
    lines = [
        f"# evomerge run `{run_dir}`",
        "",
        f"- candidates: {len(trials)} (evaluated {n_eval}, reused {len(trials) - n_eval},"
        f" failed {n_fail})",
        f"- generations: {len({t.generation for t in trials})}",
    ]
    if top:
        lines.append(f"- best fitness: {top[0].fitness:.4f} (`{top[0].digest[:12]}`)")
    tasks = sorted(
        {k for t in top for k in t.scores}
        | {k for b in baselines.values() for k in b.get("scores", {})}
    )
    lines += [
        "",
        "| model | fitness | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for i, t in enumerate(top):
        cells = [f"{t.scores.get(k, math.nan):.4f}" for k in tasks]
        lines.append(
            f"| #{i + 1} `{t.digest[:12]}` | {t.fitness:.4f} | " + " | ".join(cells) + " |"
        )
    for name, b in baselines.items():
        cells = [f"{b.get('scores', {}).get(k, math.nan):.4f}" for k in tasks]
        fit = b.get("fitness")
        fit_s = f"{fit:.4f}" if isinstance(fit, float) else "-"
        lines.append(f"| {name} | {fit_s} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"![{f.stem}]({f.name})" for f in files]
    return "\n".join(lines) + "\n"


def _html(md: str, files: list[Path]) -> str:
    body = []
    for line in md.splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    imgs = "".join(f'<p><img src="{f.name}" alt="{f.stem}"></p>' for f in files)
    return (
        "<!doctype html><meta charset=utf-8><title>evomerge report</title>"
        "<style>td{border:1px solid #ccc;padding:2px 6px}</style>"
        + "".join(b for b in body if not b.startswith("<tr>"))
        + "<table>"
        + "".join(b for b in body if b.startswith("<tr>"))
        + "</table>"
        + imgs
    )
