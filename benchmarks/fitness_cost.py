"""Fitness cost: full scoring vs racing vs a fixed random subset, at equal item budgets.

    python benchmarks/fitness_cost.py [--setups skills,cross] [--seeds 0,1,2] [--evals 32]
        [--fractions 0.5,0.2] [--driver cma_es|random] [--methods full,racing,subset]
        [--racing "{first_slice: 10, slice: 10}"] [--budget items|candidates]
        [--items N] [--score gold_loglik] [--validation V [--top-k K]]
        [--racing-top-k K] [--racing-validation "{first_slice: 12, slice: 8}"] [--work DIR]
        [--json OUT.json] [--reference A.json,B.json]
    python benchmarks/fitness_cost.py --pool A.json,B.json     # one table from several runs

With real models the fitness is almost all of a search's cost, and its unit is the item: one
test item scored for one candidate. For each setup and seed this runs, on the same space and
driver, with ``budget.max_item_evals`` as the only budget:

* ``full``     every candidate on every search item, at the whole budget B = evals x items
               (the reference) and at each fraction f of it;
* ``racing``   ``fitness.racing`` (evomerge/racing.py; its settings: ``--racing``, a YAML
               mapping), at f x B;
* ``subset``   every candidate on a fixed subset of f x items per task (the zoo's first items,
               drawn at random when the zoo was written), at f x B: as many candidates as the
               reference, each scored f times as cheaply.

``--budget candidates`` caps each search at f x evals candidates instead (racing then shows
what its early stops cost the search at an equal number of candidates). ``--items N`` scores N
search items per task instead of the setup's; ``--score gold_loglik`` has every search but
the reference score its items by the gold answer's log-likelihood (a zoo task's
``options.score``, an lm_eval task's ``<task>_gold_loglik`` twin) instead of exact match, the
held-out score staying exact match; ``--validation V`` has every search, the reference
too, pick its winner as ``fitness.validation`` does (evomerge/validation.py): its archive's
top ``--top-k`` (3) re-scored by exact match on the V items per task after its search
window, the best there wins, and the held-out items start after the reference's validation
items (the table counts the validation's item evaluations, the same for every search, in a
column of their own). ``--racing-top-k K`` gives the racing searches an archive of K
instead, and ``--racing-validation YAML`` has their validation race the archive's members for
the best (``fitness.validation.racing``) instead of scoring each on every item; the
validation column then counts the items the race spent. ``--work DIR`` keeps the runs there
(by default they go to a temp folder, deleted at the end, and each run's archived models as
soon as its winner is known).
``--json OUT.json`` also writes every seed's row (item evaluations, candidates, held-out
score); ``--pool`` prints one table per setup from such files (runs of the same setup, budget
and methods on different seeds, e.g. two halves run side by side), without running anything.
``--reference A.json,...`` takes each seed's full-scoring reference row from such files instead
of running it again (the reference is seeded: the same setup, budget and seed give the same
search), so other racing settings cost only their own searches; the files must hold the same
setup (items, budget, driver, validation) and every seed asked for.
Each search's winner (its best on its own items, or on validation) is scored on held-out items
(every test item after the search and validation windows, the same for every method) and the
table shows, per method and budget, the item evaluations spent, the candidates told, and the
winner's held-out score (mean over seeds and its standard error; then its difference to the
reference's, paired by seed, and that difference's standard error). Item evaluations are
counts, not timings: the figures do not depend on the machine. The question (issue 18): does
racing reach the reference's held-out score, within its standard error, with at most 1/5 of
its item evaluations?

Setups: ``skills`` (lm-skills, experiments/toy_ps_cmaes.yaml), ``cross`` (lm-cross,
experiments/toy_cross_ps_cmaes.yaml); ``real`` (the SmolLM2 experts, experiments/real_ps.yaml:
an lm-eval task, 40 search items; each search costs minutes on CPU). A setup is
``name: (experiment YAML, search items per task)`` over zoo or lm-eval tasks (racing scores
both; docs/racing.md); the experiment's own ``fitness.validation`` is dropped (``--validation``
sets one), the held-out items here being every later doc.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import yaml

from evomerge.config import load_experiment
from evomerge.recipe import Recipe
from evomerge.session import build_evaluator, open_resume, open_search
from evomerge.store import STORE_FILE, RunStore
from evomerge.validation import BY_VALIDATION, ranking

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
SETUPS = {
    "skills": (EXP / "toy_ps_cmaes.yaml", 25),  # 4 tasks x 25 = 100 search items
    "cross": (EXP / "toy_cross_ps_cmaes.yaml", 100),  # 1 task x 100
}
REAL_SETUPS = {"real": (EXP / "real_ps.yaml", 40)}  # the real-model experts: see the docstring


def window(
    cfg, offset: int, limit: int | None, score: str | None = None, validated: bool = False
) -> list[dict]:
    """The tasks of ``cfg`` on items ``[offset, offset + limit)`` of each (limit None: all),
    scored by ``score`` when given: a zoo task's option, an lm_eval task's twin task
    ``<task>_<score>`` (the smollm2-experts tasks ship ``_gold_loglik`` twins); ``validated``:
    their validation split scores exact match whatever ``score`` is."""
    tasks = [t.model_dump() for t in cfg.fitness.tasks]
    for t in tasks:
        if t["kind"] == "lm_eval":  # offset and limit are its own fields
            t.update(offset=offset, limit=limit, subsample=None)
            if score:  # its twin on the same items, e.g. real_target_gold_loglik
                own = t["task"]
                t.update(task=f"{own}_{score}", metric=None)
                if validated:
                    t["validation_task"] = own
        else:
            t["options"] = {**t["options"], "offset": offset, "limit": limit}
            if score:
                t["options"]["score"] = score
                if validated:
                    t["validation_score"] = "exact_match"
    return tasks


def windowed(
    exp: Path,
    offset: int,
    limit: int | None,
    more: dict | None = None,
    score: str | None = None,
    validation: int | None = None,
    validation_racing: dict | None = None,
):
    """The experiment on that window, with a validation split of ``validation`` items per task
    after it (None: none, the experiment's own dropped), raced by ``validation_racing``."""
    own = load_experiment(exp)
    tasks = window(own, offset, limit, score, validated=validation is not None)
    split = None if validation is None else {"items": validation}
    if split is not None and validation_racing is not None:
        split["racing"] = validation_racing
    o = {"fitness.tasks": tasks, "fitness.validation": split}
    return load_experiment(exp, {**o, **(more or {})})


def run_one(
    exp: Path,
    run: Path,
    seed: int,
    n: int,
    items: float,
    budget: dict,
    how: str,
    drv,
    racing,
    score: str | None = None,
    validation: int | None = None,
    top_k: int = 1,
    validation_racing: dict | None = None,
    driver_options: dict | None = None,
):
    """(item evals spent, candidates, winner recipe, validation item evals) of one search
    (``score``: what its tasks score, as ``window`` applies it; None: the setup's exact match;
    ``validation``: its winner is the best of its ``top_k`` on that many items per task after
    the search window, raced by ``validation_racing`` when given, else its best on its own
    items; ``driver_options``: set over the experiment's ``driver.options``)."""
    per_task = n if how != "subset" else max(1, round(n * items))
    o = {"seed": seed, "budget": budget, "archive.top_k": top_k if validation else 1}
    if drv is not None:
        o["driver"] = drv
    for key, value in (driver_options or {}).items():
        o[f"driver.options.{key}"] = value
    if how == "racing":
        o["fitness.racing"] = racing
    # (a subset's validation items follow its own window: unseen by it, before the held-out)
    cfg = windowed(exp, 0, per_task, o, score, validation, validation_racing)
    # a run already there (--work, a killed benchmark started again) is continued, exactly
    resumed = (run / STORE_FILE).exists()
    final = (open_resume(run, new_cfg=cfg) if resumed else open_search(cfg, run)).run()
    with RunStore.open(run, readonly=True) as st:
        spent = st.item_evals()
        best, checked = final.best_digest, 0
        if validation is not None:
            ranked = ranking(st)
            if ranked.by != BY_VALIDATION:
                raise SystemExit(f"{run}: {ranked.winner_note()}; see its store")
            best = ranked.members[0].digest
            full = _items(cfg, "validation")  # a raced member: the items it got
            checked = sum(
                m.validation_items[0] if m.validation_items else full for m in ranked.members
            )
        trial = st.trials(where="WHERE c.digest = ?", params=(best,))[0]
    return spent, final.n_candidates, Recipe.from_yaml(trial.recipe_yaml), checked


def held_out(exp: Path, run: Path, start: int, recipes: list[Recipe]) -> list[float]:
    """Exact match of ``recipes`` on every item per task from ``start`` on."""
    cfg = windowed(exp, start, None)
    ev = build_evaluator(cfg, run)
    try:
        return [r.fitness for r in ev.evaluate(recipes)]
    finally:
        ev.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="skills,cross")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--evals", type=int, default=32, help="candidates of the reference search")
    ap.add_argument("--fractions", default="0.5,0.2", help="budgets, as fractions of B")
    ap.add_argument(
        "--driver", default="cma_es", choices=["cma_es", "random"], help="cma_es: the experiments'"
    )
    ap.add_argument("--methods", default="full,racing,subset", help="rows below the reference")
    ap.add_argument("--racing", default="{first_slice: 10, slice: 10}", help="fitness.racing")
    ap.add_argument(
        "--budget", default="items", choices=["items", "candidates"], help="what f x B caps"
    )
    ap.add_argument("--items", type=int, default=None, help="search items per task (the setup's)")
    ap.add_argument(
        "--score",
        default=None,
        choices=["gold_loglik"],
        help="the searches below the reference score items by this (zoo: options.score; lm_eval: "
        "the task's <task>_gold_loglik twin); held-out: exact match",
    )
    ap.add_argument(
        "--validation",
        type=int,
        default=None,
        help="V: each winner is the best of its top --top-k by exact match on the V items per "
        "task after the search window (fitness.validation); held-out: the items after those",
    )
    ap.add_argument("--top-k", type=int, default=3, help="archive members --validation compares")
    ap.add_argument(
        "--racing-top-k", type=int, default=None, help="the racing searches' archive (--top-k)"
    )
    ap.add_argument(
        "--racing-validation",
        default=None,
        help="fitness.validation.racing of the racing searches, a YAML mapping (default: none)",
    )
    ap.add_argument(
        "--racing-driver",
        default=None,
        help="driver.options of the racing searches, a YAML mapping set over the experiment's "
        "(e.g. '{popsize: 12}'; default: the experiment's)",
    )
    ap.add_argument(
        "--work",
        default=None,
        help="keep the runs here (default: a temp folder); runs already there are continued",
    )
    ap.add_argument("--json", default=None, help="also write each seed's rows to this file")
    ap.add_argument("--pool", default=None, help="A.json,B.json: report these runs as one")
    ap.add_argument(
        "--reference", default=None, help="A.json,B.json: the reference rows of earlier --json runs"
    )
    return ap.parse_args(argv)


def plan(methods: list[str], fracs: list[float]) -> list[tuple[str, float]]:
    """(method, fraction) of each search per seed: the full-scoring reference first."""
    unknown = sorted(set(methods) - {"full", "racing", "subset"})
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; use full, racing and/or subset")
    return [("full", 1.0)] + [(how, f) for f in fracs for how in methods]


def cap(budget: str, f: float, big: int, evals: int) -> dict:
    """The search's budget at fraction ``f``: of the item evaluations B, or of the candidates
    (the same candidates, whatever they cost)."""
    if budget == "candidates":
        return {"max_evals": round(f * evals)}
    return {"max_item_evals": round(f * big)}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Runs the searches, prints a table per setup; returns its rows per setup:
    ``(method, fraction) -> [(item evals, candidates, held-out score) per seed]``, each row
    with the validation's item evaluations after them under ``--validation``."""
    args = parse_args(argv)
    if args.pool:
        return pool_report(args.pool.split(","))
    racing = yaml.safe_load(args.racing)
    raced_val = yaml.safe_load(args.racing_validation) if args.racing_validation else None
    raced_drv = yaml.safe_load(args.racing_driver) if args.racing_driver else None
    seeds = [int(s) for s in args.seeds.split(",")]
    fracs = [float(f) for f in args.fractions.split(",")]
    todo = plan(args.methods.split(","), fracs)
    drv = {"name": "random", "options": {"batch_size": 8}} if args.driver == "random" else None
    keep = args.work is not None
    work = Path(args.work) if keep else Path(tempfile.mkdtemp(prefix="evomerge_fitness_cost_"))
    tables, saved = {}, {}
    try:
        for name in args.setups.split(","):
            if name not in SETUPS and name not in REAL_SETUPS:
                print(f"{name}: skipped, not in SETUPS (nor REAL_SETUPS: the real-model hook)")
                continue
            exp, n = {**SETUPS, **REAL_SETUPS}[name]
            n = args.items or n
            pool = _search_items(exp, n)
            big = args.evals * pool
            head = {"n": n, "pool": pool, "big": big, "seeds": seeds, "driver": args.driver}
            if args.validation is not None:
                head.update(validation=args.validation, top_k=args.top_k)
            known = reference_rows(args.reference.split(","), name, head) if args.reference else {}
            rows: dict[tuple[str, float], list[tuple]] = {}
            for seed in seeds:
                winners, keys = [], []
                if known:
                    rows.setdefault(("full", 1.0), []).append(known[seed])
                for how, f in todo[1:] if known else todo:
                    run = work / f"{name}-{how}-{f}-s{seed}"
                    budget = cap(args.budget, f, big, args.evals)
                    score = args.score if (how, f) != ("full", 1.0) else None
                    top_k, vr, options = args.top_k, None, None
                    if how == "racing":
                        top_k, vr = args.racing_top_k or args.top_k, raced_val
                        options = raced_drv
                    spent, cands, win, checked = run_one(
                        exp, run, seed, n, f, budget, how, drv, racing, score,
                        args.validation, top_k, vr, options,
                    )  # fmt: skip
                    if not keep:  # its archived models (top-k merged models each): GBs a seed
                        shutil.rmtree(run / "archive", ignore_errors=True)
                    winners.append(win)
                    keys.append((how, f, spent, cands, checked))
                start = n + (args.validation or 0)
                scores = held_out(exp, work / f"{name}-held-s{seed}", start, winners)
                for (how, f, spent, cands, checked), h in zip(keys, scores, strict=True):
                    row = (spent, cands, h) + ((checked,) if args.validation else ())
                    rows.setdefault((how, f), []).append(row)
            report(name, rows=rows, **head)
            if any(how == "racing" for how, _ in todo):
                print(f"racing: {racing}")
                if args.racing_top_k or raced_val:
                    print(f"racing searches' archive: {args.racing_top_k or args.top_k}, "
                          f"validation racing: {raced_val}")  # fmt: skip
                if raced_drv:
                    print(f"racing searches' driver options: {raced_drv}")
            if args.score:
                print(f"the searches below the reference scored items by {args.score}")
            tables[name] = rows
            saved[name] = {
                **head,
                "racing": racing,
                "racing_top_k": args.racing_top_k,
                "racing_validation": raced_val,
                "racing_driver": raced_drv,
                "score": args.score,
                "rows": [[*k, v] for k, v in rows.items()],
            }
            if args.json:  # after each setup, so a later failure keeps the finished ones
                Path(args.json).write_text(json.dumps(saved, indent=1))
    finally:
        if not keep:  # merged models of every winner live there: do not leave them behind
            shutil.rmtree(work, ignore_errors=True)
    return tables


def reference_rows(files: list[str], name: str, head: dict) -> dict[int, tuple[int, int, float]]:
    """seed -> the full-scoring reference's (item evals, candidates, held-out) from ``--json``
    files of setup ``name``; refuses files of another setup, budget or driver, or missing a
    seed of ``head["seeds"]``."""
    known: dict[int, tuple[int, int, float]] = {}
    for f in files:
        run = json.loads(Path(f).read_text()).get(name)
        if run is None:
            raise SystemExit(f"--reference: {f} has no {name} rows; give a --json file of {name}")
        keys = ("n", "pool", "big", "driver", "validation", "top_k")
        _same_setup("--reference", f, name, run, head, keys)
        ref = next(vals for how, frac, vals in run["rows"] if (how, frac) == ("full", 1.0))
        known.update({s: tuple(v) for s, v in zip(run["seeds"], ref, strict=True)})
    missing = [s for s in head["seeds"] if s not in known]
    if missing:
        raise SystemExit(f"--reference: no reference row for seeds {missing} in {','.join(files)}")
    return known


def _same_setup(flag: str, f: str, name: str, run: dict, want: dict, keys: tuple) -> None:
    """Refuses ``run`` (setup ``name`` of file ``f``) where it differs from ``want`` in ``keys``."""
    for key in keys:
        if run.get(key) != want.get(key):  # (files before --validation have no such keys)
            raise SystemExit(f"{flag}: {f}: {name}'s {key} {run.get(key)!r} != {want.get(key)!r}")


def pool_report(files: list[str]) -> dict[str, dict]:
    """One table per setup from ``--json`` files: their seeds' rows concatenated (each row's
    seeds stay in the reference's order, so the pairing by seed holds). The files must agree
    on the setup's items, budget, driver, racing settings and rows, and not share a seed."""
    merged: dict[str, dict] = {}
    for f in files:
        for name, run in json.loads(Path(f).read_text()).items():
            if name not in merged:
                merged[name] = run
                continue
            m = merged[name]
            keys = ("n", "pool", "big", "driver", "racing", "racing_driver", "validation", "top_k")
            _same_setup("--pool", f, name, run, m, keys)
            if run.get("score") != m.get("score"):
                raise SystemExit(f"--pool: {f}: {name} was scored by {run.get('score')}")
            if [r[:2] for r in m["rows"]] != [r[:2] for r in run["rows"]]:
                raise SystemExit(f"--pool: {f}: {name} has other rows (methods or fractions)")
            if set(m["seeds"]) & set(run["seeds"]):
                raise SystemExit(f"--pool: {f}: {name} repeats seeds {m['seeds']}")
            m["seeds"] = m["seeds"] + run["seeds"]
            for row, more in zip(m["rows"], run["rows"], strict=True):
                row[2] = row[2] + more[2]
    tables = {}
    for name, m in merged.items():
        rows = {(how, f): [tuple(v) for v in vals] for how, f, vals in m["rows"]}
        head = {k: m[k] for k in ("n", "pool", "big", "seeds", "driver")}
        head.update({k: m[k] for k in ("validation", "top_k") if k in m})
        report(name, rows=rows, **head)
        if any(how == "racing" for how, _ in rows):  # as main prints it
            print(f"racing: {m['racing']}")
        if m.get("score"):
            print(f"the searches below the reference scored items by {m['score']}")
        tables[name] = rows
    return tables


def _search_items(exp: Path, n: int) -> int:
    """Search items of the whole suite with ``n`` per task (a group's subtasks count apart)."""
    return _items(windowed(exp, 0, n), "search")


def _items(cfg, split: str) -> int:
    """Items of ``cfg``'s whole suite on ``split`` (search or validation)."""
    from evomerge.fitness import build_fitness

    fit = build_fitness(cfg.fitness, base_dir=cfg.base_dir, split=split)
    return sum(k for _, k, _ in fit.item_entries())


def report(name, n, pool, big, seeds, rows, driver, validation=None, top_k=None) -> None:
    """Per method and budget: means over seeds, the held-out score's standard error, and its
    difference to the reference's, paired by seed (the same seed starts both searches the same
    way), with that difference's standard error; with ``validation``, the validation's item
    evaluations per search too."""
    print(
        f"\n{name}: {driver}, {pool} search items ({n} per task), B = {big} item evaluations, "
        f"seeds {seeds}; held-out = every later test item"
    )
    if validation is not None:
        print(
            f"winners: the best of each search's top {top_k} by exact match on {validation} "
            "validation items per task after its window (column 'validation': their item evals)"
        )
    head = f"{'method':<10}{'budget':>8}{'item evals':>12}{'candidates':>12}{'held-out':>10}"
    print(f"{head}{'SE':>8}{'vs full':>9}{'SE':>8}" + ("  validation" if validation else ""))
    ref = [v[2] for v in rows[("full", 1.0)]]
    for (how, f), vals in rows.items():
        spent = statistics.mean(v[0] for v in vals)
        cands = statistics.mean(v[1] for v in vals)
        held = [v[2] for v in vals]
        diff = [h - r for h, r in zip(held, ref, strict=True)]
        print(
            f"{how:<10}{f:>7.0%} {spent:>11.0f}{cands:>12.1f}{statistics.mean(held):>10.4f}"
            f"{_se(held):>8.4f}{statistics.mean(diff):>+9.4f}{_se(diff):>8.4f}"
            + (f"{statistics.mean(v[3] for v in vals):>12.0f}" if validation else "")
        )


def _se(xs: list[float]) -> float:
    return statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")


if __name__ == "__main__":
    main()
