"""Few-item fitness estimators replayed on real searches: does IRT beat a random subset?

    python benchmarks/few_item_estimators.py [--setups skills,cross] [--seeds 0,1,2,3,4]
        [--evals 48] [--ks 5,10,20,0.2] [--dims 1] [--draws 20] [--first-gen 1] [--no-refit]

The per-item scores of real searches (benchmarks/few_item_runs.py: lm-skills and lm-cross,
CMA-ES, racing off, every candidate on every item; cached, so this replays and never reruns a
search) are replayed in scoring order. Each candidate of generation ``--first-gen`` and later
is estimated from k of its item scores, with everything fitted only on the models scored
before its generation (the experts, the base, and the earlier generations' candidates, all
fully scored: the most the estimators can be given; with ``--no-refit`` only on the models
before ``--first-gen``, which is what a search scoring its later candidates on the anchors
only would have):

* ``random``       mean of the item values over a uniform random k-subset (``--draws`` seeded
                   draws per generation, each shared by its candidates; the item value is
                   the one racing uses, evomerge/fitness/items.py, so the mean is unbiased);
* ``random-strat`` the same with k split over the task entries in proportion to their items
                   (tinyBenchmarks' stratified baseline), each entry weighted by its share
                   of the fitness;
* ``anchor-corr``  anchor-weighted mean, anchors by k-means on the items' correctness vectors;
* ``anchor-irt``   the same with anchors by k-means on the items' IRT parameters;
* ``irt``          IRT ability fitted on the anchor-irt items, predicted accuracy on all items;
* ``pirt``         p-IRT (observed anchors + predictions, mixed by the share seen);
* ``gpirt-val``    gp-IRT with lambda chosen on validation models (tinyBenchmarks' tool);
* ``gpirt-0.5``    gp-IRT with MERGE3's fixed 0.5 mix;
* ``mp-irt``       MERGE3's mp-IRT: p-IRT from an ability fitted as a linear combination of the
                   experts' fitted abilities (the endpoints of the merge; not the base);
* ``gmp-irt-0.5``  MERGE3's gmp-IRT: mp-IRT mixed 0.5 with the anchor-weighted mean
(evomerge/fitness/irt.py names the papers and where it departs).

Reported per setup, k and estimator, each as the mean over seeds and its standard error:
the mean absolute error against the full score; the Spearman rank correlation of estimate and
full score within each generation (averaged over generations); and, on the candidates whose
full score beats every model scored before them (new bests, where a search is going), the mean
absolute error and the mean signed error (estimate - full). Deterministic; no timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evomerge.config import load_experiment
from evomerge.experiment import resolve_models
from evomerge.fitness.irt import (
    anchor_estimate,
    fit_ability_mp,
    fit_irt,
    gp_irt_lambda,
    irt_embedding,
    irt_estimates,
    select_anchors,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from few_item_runs import SETUPS, generate  # noqa: E402  (a sibling script)

ESTIMATORS = (
    "random",
    "random-strat",
    "anchor-corr",
    "anchor-irt",
    "irt",
    "pirt",
    "gpirt-val",
    "gpirt-0.5",
    "mp-irt",
    "gmp-irt-0.5",
)
FIXED_MIX = 0.5  # MERGE3's released code (gmp-IRT, delta = 0.5)


@dataclass(frozen=True)
class Run:
    y: np.ndarray  # models x items, in scoring order (experts and base first)
    w: np.ndarray  # item weights (sum 1): item i counts w_i in the fitness
    generation: np.ndarray  # -1 for the experts and the base
    entry: np.ndarray  # the task entry (0, 1, ...) of each item
    names: tuple[str, ...] = ()  # "candidate <idx>", or the expert's / base's folder name

    @property
    def full(self) -> np.ndarray:
        return self.y @ self.w

    @classmethod
    def load(cls, path: Path) -> Run:
        models = json.loads(path.read_text())["models"]
        models.sort(key=lambda m: m["generation"])  # stable: candidates keep their idx order
        return cls(
            y=np.array([m["y"] for m in models], dtype=float),
            w=np.array(models[0]["w"], dtype=float),
            generation=np.array([m["generation"] for m in models]),
            entry=np.repeat(
                np.arange(len(models[0]["entries"])), [n for _, n in models[0]["entries"]]
            ),
            names=tuple(m["name"] for m in models),
        )

    def rows(self, names: set[str]) -> np.ndarray:
        """The rows of the models called ``names`` (scored first: they sit at the top)."""
        found = np.array([i for i, n in enumerate(self.names) if n in names], dtype=int)
        if found.size == 0:
            raise SystemExit(
                f"none of {sorted(names)} among the cached models: rerun few_item_runs"
            )
        return found


def endpoint_names(setup: str) -> set[str]:
    """The folder names of the setup's experts (the endpoints mp-IRT combines)."""
    experts, _ = resolve_models(load_experiment(SETUPS[setup]))
    return {Path(e).name for e in experts}


def random_subset(n: int, k: int, rng) -> np.ndarray:
    """A uniform random k-subset of the n pool items."""
    return rng.choice(n, size=k, replace=False)


def subset_mean(y_row: np.ndarray, w: np.ndarray, pick: np.ndarray) -> float:
    """Mean of the item values ``N * w_i * y_i`` over ``pick`` (unbiased for a uniform subset)."""
    return float(np.mean(len(w) * w[pick] * y_row[pick]))


def stratified_subset(entry: np.ndarray, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """k items split over the task entries in proportion to their items (largest remainder;
    equal entries get equal shares), drawn uniformly within each; with per-item weights
    ``1 / m_e`` (``m_e`` drawn from entry e), so that weighting each entry by its share of the
    fitness gives an unbiased estimate."""
    entries, counts = np.unique(entry, return_counts=True)
    quota = k * counts / counts.sum()
    sizes = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - sizes), kind="stable")[: k - sizes.sum()]:
        sizes[i] += 1
    picks, weights = [], []
    for e, m in zip(entries, sizes):
        if m == 0:
            continue
        picks.append(rng.choice(np.flatnonzero(entry == e), size=m, replace=False))
        weights.append(np.full(m, 1.0 / m))
    return np.concatenate(picks), np.concatenate(weights)


def replay(
    run: Run,
    k: int,
    seed: int,
    draws: int,
    dims: int,
    first_gen: int,
    refit: bool = True,
    endpoints: np.ndarray | None = None,
) -> list[dict]:
    """One record per replayed candidate: its generation, full score, whether it is a new best
    (beats every model scored before its generation), and each estimator's estimate (the
    random ones: one per draw). ``refit``: the estimators are fitted on every model scored
    before the candidate's generation; else only on those before ``first_gen`` (what a search
    that scores later candidates on the anchors only would have). ``endpoints``: the experts'
    rows, whose fitted abilities mp-IRT combines (default: every model before generation 0)."""
    if endpoints is None:
        endpoints = np.flatnonzero(run.generation < 0)
    out = []
    for g in sorted({int(x) for x in run.generation if x >= first_gen}):
        train = run.y[run.generation < (g if refit else first_gen)]
        best_before = float(np.max(run.full[run.generation < g]))
        model = fit_irt(train, dims=dims, seed=seed)
        corr = select_anchors(train.T, k, run.w, seed=seed)
        anchors = select_anchors(irt_embedding(model), k, run.w, seed=seed)
        lam = gp_irt_lambda(train, run.w, k, dims=dims, seed=seed)
        # One subset per draw, shared by the generation's candidates (paired, like racing and
        # like the anchors), so a within-generation ranking compares them on the same items.
        n = len(run.w)
        rngs = [np.random.default_rng([seed, g, k, d]) for d in range(draws)]
        uniform = [random_subset(n, k, r) for r in rngs]
        strat = [stratified_subset(run.entry, k, r) for r in rngs]
        share = np.array([run.w[run.entry == e].sum() for e in range(run.entry.max() + 1)])
        for c in np.flatnonzero(run.generation == g):
            row = run.y[c]
            fam = irt_estimates(model, anchors, row[anchors.items], run.w, (lam, FIXED_MIX))
            # the experts are scored first, so their rows in ``train`` are their rows in run.y
            mp_theta = fit_ability_mp(
                model, anchors.items, row[anchors.items], model.theta[endpoints]
            )
            mp = irt_estimates(
                model, anchors, row[anchors.items], run.w, (FIXED_MIX,), theta=mp_theta
            )
            est = {
                "random": [subset_mean(row, run.w, pick) for pick in uniform],
                "random-strat": [
                    float(np.sum(share[run.entry[p]] * sw * row[p])) for p, sw in strat
                ],
                "anchor-corr": anchor_estimate(corr, row[corr.items]),
                "anchor-irt": anchor_estimate(anchors, row[anchors.items]),
                "irt": fam["irt"],
                "pirt": fam["pirt"],
                "gpirt-val": fam[f"gpirt@{lam:g}"],
                "gpirt-0.5": fam[f"gpirt@{FIXED_MIX:g}"],
                "mp-irt": mp["pirt"],
                "gmp-irt-0.5": mp[f"gpirt@{FIXED_MIX:g}"],
            }
            full = float(row @ run.w)
            out.append({"gen": g, "full": full, "new_best": full > best_before, "est": est})
    return out


def run_metrics(records: list[dict], name: str) -> dict[str, float]:
    """MAE, within-generation Spearman, and new-best MAE / signed error of one estimator on one
    replayed run (``random``: averaged over its draws)."""
    from scipy.stats import spearmanr

    drawn = isinstance(records[0]["est"][name], list)
    n_draws = len(records[0]["est"][name]) if drawn else 1

    def est(r, d):
        e = r["est"][name]
        return e[d] if drawn else e

    per_draw = []
    for d in range(n_draws):
        err = np.array([est(r, d) - r["full"] for r in records])
        rhos = []
        for g in sorted({r["gen"] for r in records}):
            rs = [r for r in records if r["gen"] == g]
            a, b = [est(r, d) for r in rs], [r["full"] for r in rs]
            if len(rs) > 2 and np.ptp(a) > 0 and np.ptp(b) > 0:
                rhos.append(spearmanr(a, b).statistic)
        nb = np.array([r["new_best"] for r in records])
        per_draw.append(
            {
                "mae": float(np.mean(np.abs(err))),
                "rho": float(np.mean(rhos)) if rhos else float("nan"),
                "nb_mae": float(np.mean(np.abs(err[nb]))) if nb.any() else float("nan"),
                "nb_bias": float(np.mean(err[nb])) if nb.any() else float("nan"),
            }
        )
    return {m: float(np.mean([p[m] for p in per_draw])) for m in per_draw[0]}


def mean_se(vals: list[float]) -> str:
    vals = [v for v in vals if not np.isnan(v)]
    if not vals:
        return "n/a"
    se = statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else float("nan")
    return f"{statistics.mean(vals):+.3f} ± {se:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="skills,cross")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--evals", type=int, default=48, help="candidates per cached search")
    ap.add_argument("--ks", default="5,10,20,0.2", help="items per estimate; < 1: share of pool")
    ap.add_argument("--dims", type=int, default=1, help="IRT dimensions")
    ap.add_argument("--draws", type=int, default=20, help="random subsets per candidate")
    ap.add_argument("--first-gen", type=int, default=1, help="first generation replayed")
    ap.add_argument(
        "--no-refit",
        action="store_true",
        help="fit only on the models before --first-gen (not on every earlier generation)",
    )
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        "| setup | k | estimator | MAE | Spearman in gen. | new-best MAE | new-best error |\n"
        "|---|---|---|---|---|---|---|"
    )
    for setup in args.setups.split(","):
        runs = [Run.load(generate(setup, s, args.evals)) for s in seeds]
        experts = endpoint_names(setup)
        n_items = runs[0].y.shape[1]
        for kk in args.ks.split(","):
            k = round(float(kk) * n_items) if float(kk) < 1 else int(kk)
            per_seed = {e: [] for e in ESTIMATORS}
            n_new = 0
            for s, run in zip(seeds, runs):
                recs = replay(
                    run,
                    k,
                    s,
                    args.draws,
                    args.dims,
                    args.first_gen,
                    not args.no_refit,
                    run.rows(experts),
                )
                n_new += sum(r["new_best"] for r in recs)
                for e in ESTIMATORS:
                    per_seed[e].append(run_metrics(recs, e))
            for e in ESTIMATORS:
                ms = per_seed[e]
                cells = [mean_se([m[x] for m in ms]) for x in ("mae", "rho", "nb_mae", "nb_bias")]
                print(
                    f"| {setup} ({n_items} items, {n_new} new bests) | {k} | {e} | "
                    + " | ".join(cells)
                    + " |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
