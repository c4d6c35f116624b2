"""Racing within a generation (fitness.racing): real zoo experts (lm-skills), real merges, real
SQLite, a real SIGKILL. The elimination rule on a case whose answer is known, the racer on the
zoo's own experts against their plain scores, item evaluations saved by a search, determinism,
exact resume, the item budget, the off switch and the refusals."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from evomerge.config import load_experiment
from evomerge.errors import UserInputError
from evomerge.fitness import build_fitness, parse_fitness_config
from evomerge.fitness.items import ItemPool
from evomerge.racing import Racer, paired_upper, settle, sure_losers
from evomerge.recipe import Recipe
from evomerge.search_cli import resume, search, status
from evomerge.store import RunStore
from tests.helpers.kill_resume import cli, kill_at_random

pytestmark = pytest.mark.timeout(900)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
EXPERTS = ["cipher", "shift", "sort", "reverse"]
PPL_TEXT = Path(__file__).resolve().parents[1] / "fitness" / "calibration" / "lm-skills.txt"


def _experiment(
    tmp: Path,
    *,
    racing: str | None,
    driver: str,
    budget: str,
    name="exp.yaml",
    ppl: str = "",
    zoo: bool = True,
):
    """``ppl``: a perplexity task's options (its score is a ratio of sums); ``zoo``: the zoo
    task (48 items) too."""
    models = "".join(f"\n  - zoo:lm-skills/{e}" for e in EXPERTS)
    tasks = "\n    - {kind: zoo, name: skills, evaluator: skills, options: {limit: 12}}" * zoo
    if ppl:
        tasks += f"\n    - {{kind: perplexity, text_file: {PPL_TEXT}, {ppl}}}"
    racing_line = f"\n  racing: {racing}" if racing is not None else ""
    text = f"""\
name: racing_test
models:{models}
base_model: zoo:lm-skills/base
space: {{preset: ps_dare_ties, layer_groups: 1, x0: {{weight: 0.25}}}}
fitness:
  tasks:{tasks}{racing_line}
driver: {driver}
budget: {budget}
seed: 3
archive: {{top_k: 2}}
"""
    path = tmp / name
    path.write_text(text)
    return path


RACE = "{first_slice: 8, slice: 8}"
RANDOM = "{name: random, options: {batch_size: 6}}"
CMA = "{name: cma_es, options: {popsize: 6, sigma0: 0.3}}"


def _snapshot(run: Path):
    with sqlite3.connect(f"file:{run / 'store.sqlite'}?mode=ro", uri=True) as conn:
        trials = conn.execute(
            "SELECT c.idx, c.generation, c.digest, c.genes_json, c.reused_from, c.meta_json,"
            " r.status, r.fitness, r.scores_json, r.per_example_json"
            " FROM candidates c JOIN results r USING (idx) ORDER BY idx"
        ).fetchall()
        archive = conn.execute("SELECT rank, digest, idx, fitness FROM archive").fetchall()
        counts = conn.execute(
            "SELECT n_candidates, n_evals FROM checkpoints ORDER BY generation"
        ).fetchall()
    return trials, archive, counts


def _racing_meta(trials) -> list[dict]:
    return [json.loads(t[5]).get("racing") for t in trials]


# ---- the elimination rule ----------------------------------------------------------------------
def test_sure_losers_on_a_known_case():
    rng = np.random.default_rng(0)
    good = (rng.random(40) < 0.9).astype(float)
    mid = (rng.random(40) < 0.6).astype(float)
    bad = np.zeros(40)
    floor = (rng.random(40) < 0.5).astype(float)
    vals = {0: mid, 1: good, 2: bad}
    # k = 1, an archive of 2: 'good' and 'mid' would fill it; 'bad' is below both on every item
    assert sure_losers(vals, 1, [floor], 2, 1.645) == {2}
    # an archive of 1: only 'good' would enter it, and 'mid' is surely below 'good' too
    assert sure_losers(vals, 1, [floor], 1, 1.645) == {0, 2}
    # an empty archive of 3 takes all three: nobody is dropped; of 2 it takes good and mid
    assert sure_losers(vals, 1, [], 3, 1.645) == set()
    assert sure_losers(vals, 1, [], 2, 1.645) == {2}
    # k = 2: 'mid' and 'good' are the best two, 'bad' still goes
    assert sure_losers(vals, 2, [floor], 1, 1.645) == {2}
    # k = 3: every candidate is needed
    assert sure_losers(vals, 3, [floor], 1, 1.645) == set()
    # a candidate equal to the reference on every item is never dropped (paired: no evidence)
    assert sure_losers({0: good, 1: good.copy()}, 1, [np.ones(40)], 1, 1.645) == set()
    # above the archive's floor: it could enter the archive, so it stays although it loses
    assert sure_losers({0: good, 1: mid}, 1, [np.zeros(40)], 2, 1.645) == set()
    assert paired_upper(bad, good, 1.645) < 0 < paired_upper(good, bad, 1.645)


def test_settle_set_also_stops_the_sure_members_of_the_best_k():
    rng = np.random.default_rng(0)
    good = (rng.random(40) < 0.9).astype(float)
    mid = (rng.random(40) < 0.6).astype(float)
    bad = np.zeros(40)
    vals = {0: mid, 1: good, 2: bad}
    perfect = [np.ones(40)]  # an archive of 1 nobody here can enter
    # the best 2 as an order: good and mid are scored on; as a set they are settled too
    assert settle(vals, 2, perfect, 1, 1.645) == ({2}, set())
    assert settle(vals, 2, perfect, 1, 1.645, inside=True) == ({2}, {0, 1})
    # 'good' could enter an empty archive of 1: it goes on; 'mid' is surely below it
    assert settle(vals, 2, [], 1, 1.645, inside=True) == ({2}, {0})
    # every place taken (need 0): whoever cannot enter the archive stops
    assert settle(vals, 0, perfect, 1, 1.645, inside=True) == ({0, 1, 2}, set())
    # two equal candidates are never settled apart (paired: no evidence)
    assert settle({0: good, 1: good.copy()}, 1, perfect, 1, 1.645, inside=True) == (set(), set())
    # archive_places 0: no archive place is raced for, only the driver's need: 'good', which
    # could take an empty archive's place, stops as soon as it is surely among the best 2
    assert settle(vals, 2, [], 0, 1.645, inside=True) == ({2}, {0, 1})
    assert sure_losers({0: good, 1: mid}, 1, [np.zeros(40)], 0, 1.645) == {1}
    # the default is left out of the stored config: earlier runs hash the same
    fit = {"tasks": [{"kind": "zoo", "evaluator": "skills"}]}
    assert parse_fitness_config({**fit, "racing": {}}).model_dump()["racing"] == {
        "enabled": True,
        "first_slice": 20,
        "slice": 10,
        "confidence": 0.95,
    }
    raced = parse_fitness_config({**fit, "racing": {"settle": "set"}})
    assert raced.model_dump()["racing"]["settle"] == "set"


def test_indifference_stops_ties_that_the_plain_bound_never_separates():
    zero = np.zeros(10)  # a hard target: every candidate wrong on every item so far
    one_more = zero.copy()
    one_more[3] = 1.0  # one item right: 0.1 above the others on these 10
    perfect = [np.ones(10)]  # an archive of 1 nobody here can enter
    ties = {0: zero, 1: zero.copy(), 2: zero.copy()}
    # equal on every item: the paired bound is exactly 0, never below it, so nobody stops
    assert settle(ties, 1, perfect, 1, 0.52, inside=True) == (set(), set())
    # within an indifference zone they count as tied: all stop, the first (0) settled inside
    assert settle(ties, 1, perfect, 1, 0.52, inside=True, eps=0.01) == ({1, 2}, {0})
    assert sure_losers(ties, 1, perfect, 1, 0.52, eps=0.01) == {1, 2}
    # equal means on other items are not a sure tie: the bound on a paired difference of
    # two single items in ten (mean 0, sd 0.471) is 0.52 x 0.471 / sqrt(10) = 0.077
    other = zero.copy()
    other[5] = 1.0
    pair = {0: one_more, 1: other}
    assert paired_upper(other, one_more, 0.52) == pytest.approx(0.52 * (2 / 9) ** 0.5 / 10**0.5)
    assert settle(pair, 1, perfect, 1, 0.52, inside=True, eps=0.01) == (set(), set())
    assert settle(pair, 1, perfect, 1, 0.52, inside=True, eps=0.1) == ({1}, {0})
    # the zone also applies to the archive's gate: a tie with an empty archive's place enters
    assert settle(ties, 1, [], 1, 0.52, inside=True, eps=0.01) == ({1, 2}, set())
    # off by default: 0 is left out of the stored config, so earlier runs hash the same
    fit = {"tasks": [{"kind": "zoo", "evaluator": "skills"}]}
    assert "indifference" not in parse_fitness_config({**fit, "racing": {}}).model_dump()["racing"]
    raced = parse_fitness_config({**fit, "racing": {"indifference": 0.01}})
    assert raced.model_dump()["racing"]["indifference"] == 0.01
    with pytest.raises(UserInputError, match="racing.indifference"):
        parse_fitness_config({**fit, "racing": {"indifference": -0.1}})


def test_item_pool_order_is_seeded_and_values_average_to_the_fitness():
    cfg = parse_fitness_config(
        {"tasks": [{"kind": "zoo", "evaluator": "skills", "options": {"limit": 12}}]}
    )
    fit = build_fitness(cfg)
    a, b, c = ItemPool.build(fit, 3), ItemPool.build(fit, 3), ItemPool.build(fit, 4)
    assert a.size == 48 and a.order == b.order and a.order != c.order
    assert sorted(a.order) == [(e, p) for e in range(4) for p in range(12)]
    # every slice of the pool, joined, gives every entry's items back in window order
    pos = a.positions(0, 48)
    assert len(pos) == 4 and all(label.startswith("skills/") for label in pos)
    assert all(sorted(p) == list(range(12)) for p in pos.values())
    # order "generation": each generation its own seeded order of the same items; the run's
    # seed and the generation alone decide it (a resumed run races on the same order)
    g1, g2 = a.for_generation(1), a.for_generation(2)
    assert g1.order == b.for_generation(1).order != g2.order != a.order
    assert sorted(g1.order) == sorted(a.order) and g1.entries == a.entries
    assert g1.order != c.for_generation(1).order


# ---- the racer on real experts, against their plain scores ---------------------------------------
@pytest.fixture(scope="module")
def experts_setup(tmp_path_factory):
    from evomerge.experiment import resolve_models
    from evomerge.session import build_evaluator

    tmp = tmp_path_factory.mktemp("experts")
    exp = _experiment(tmp, racing=RACE, driver=RANDOM, budget="{max_evals: 6}")
    cfg = load_experiment(exp)
    models, base = resolve_models(cfg)
    paths = [*models, base]

    def scaled(path: str, w: float) -> Recipe:
        return Recipe.from_dict(
            {
                "merge_method": "linear",
                "models": [{"model": path, "parameters": {"weight": w}}],
                "parameters": {"normalize": False},
            }
        )

    # the experts and the base as they are, and two broken ones (weights shrunk to 5%)
    recipes = [scaled(p, 1.0) for p in paths] + [scaled(paths[0], 0.05), scaled(paths[1], 0.05)]
    evaluator = build_evaluator(cfg, tmp)
    yield cfg, recipes, evaluator
    evaluator.close()


def test_racer_keeps_the_best_and_scores_it_exactly_as_a_plain_evaluation(experts_setup):
    cfg, recipes, evaluator = experts_setup
    plain = evaluator.evaluate(recipes)
    assert all(r.ok for r in plain)
    fitness = build_fitness(cfg.fitness)
    pool = ItemPool.build(fitness, cfg.seed)
    for r in plain:  # the mean of the item values is the fitness
        assert np.isclose(pool.full_values(r.result).mean(), r.fitness)
    order = sorted(range(len(plain)), key=lambda i: (-plain[i].fitness, i))
    assert plain[order[-1]].fitness < 0.05 < plain[order[0]].fitness - 0.2  # the known answer
    racer = Racer(cfg.fitness.racing, pool, fitness, need=1, places=1)
    # the archive holds the second best: only the best can still enter it
    out = racer.race(evaluator, recipes, [pool.full_values(plain[order[1]].result)])
    best = order[0]
    assert out.items[best] == pool.size
    for i, (r, p) in enumerate(zip(out.results, plain, strict=True)):
        if out.items[i] == pool.size:  # fully scored: byte for byte the plain result
            assert r.fitness == p.fitness and r.result == p.result
        else:  # stopped: surely below the best, and told the mean of the items it saw
            assert p.fitness < plain[best].fitness
            assert sum(len(t.per_example) for t in r.result.tasks.values()) == out.items[i]
    broken = [i for i in range(len(plain)) if plain[i].fitness < 0.05]
    assert broken and all(out.items[i] < pool.size for i in broken), out.items
    assert sum(out.items) < len(recipes) * pool.size  # it saved item evaluations
    # settle: set, the best 5 (experts and base) as a set, under a perfect archive member
    # nobody can pass: they stop once surely above the broken ones instead of being scored on
    perfect = [np.ones(pool.size)]  # every item, as a set the same 5 are told best
    as_set = cfg.fitness.racing.model_copy(update={"settle": "set"})
    a = Racer(cfg.fitness.racing, pool, fitness, need=5, places=1).race(evaluator, recipes, perfect)
    b = Racer(as_set, pool, fitness, need=5, places=1).race(evaluator, recipes, perfect)
    assert sum(b.items) < sum(a.items), (a.items, b.items)
    assert all(a.items[i] == pool.size for i in order[:5])  # by order: the 5 on every item
    told = sorted(range(len(recipes)), key=lambda i: -b.results[i].fitness)
    assert set(told[:5]) == set(order[:5])
    # order "generation": generation 1's own item order; a stopped candidate is told the mean
    # of that order's first items, the best is still scored exactly
    by_gen = cfg.fitness.racing.model_copy(update={"order": "generation"})
    racer = Racer(by_gen, pool, fitness, need=1, places=1)
    racer.start_generation(1)
    g = racer.pool
    assert g.order != pool.order
    out = racer.race(evaluator, recipes, [g.full_values(plain[order[1]].result)])
    assert out.results[best].fitness == plain[best].fitness
    stopped = [i for i in range(len(plain)) if out.items[i] < g.size]
    assert stopped
    for i in stopped:
        first = g.full_values(plain[i].result)[: out.items[i]]
        assert np.isclose(out.results[i].fitness, first.mean())


# ---- searches ----------------------------------------------------------------------------------
def test_search_saves_item_evaluations_and_archives_only_fully_scored(tmp_path, capsys):
    plain_exp = _experiment(tmp_path, racing=None, driver=RANDOM, budget="{max_evals: 12}")
    race_exp = _experiment(
        tmp_path, racing=RACE, driver=RANDOM, budget="{max_evals: 12}", name="race.yaml"
    )
    assert search(plain_exp, tmp_path / "plain") == 0
    assert search(race_exp, tmp_path / "race") == 0
    assert search(race_exp, tmp_path / "race2") == 0  # deterministic
    capsys.readouterr()
    p, r, r2 = (_snapshot(tmp_path / d) for d in ("plain", "race", "race2"))
    assert r == r2
    meta = _racing_meta(r[0])
    assert all(m and m["of"] == 48 for m in meta)
    short = [i for i, m in enumerate(meta) if m["items"] < m["of"]]
    assert short, "racing stopped no candidate early"
    with RunStore.open(tmp_path / "race", readonly=True) as st:
        race_items = st.item_evals()
        assert st.partial_idx() == {r[0][i][0] for i in short}
    with RunStore.open(tmp_path / "plain", readonly=True) as st:
        plain_items = st.item_evals()
    assert plain_items == 12 * 48
    assert race_items == sum(m["items"] for m in meta) < plain_items
    # random search asks the same candidates either way: the fully scored ones score the same
    for i, (pt, rt) in enumerate(zip(p[0], r[0], strict=True)):
        assert pt[2] == rt[2]  # digest
        if i not in short:
            assert pt[7] == rt[7] and pt[9] == rt[9]
    # nothing scored on part of the items enters the archive; the winner is the plain one
    assert not {row[2] for row in r[1]} & {r[0][i][0] for i in short}
    assert r[1][0][1] == p[1][0][1]
    # the report counts the items and its best-so-far curve, like the archive, rests only on
    # fully scored candidates: it ends at the archive's best
    from evomerge.report import best_and_median, write_report

    write_report(tmp_path / "race", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"item evaluations: {race_items}  (racing stopped {len(short)} candidate(s) early)" in md
    with RunStore.open(tmp_path / "race", readonly=True) as st:
        trials, partial = st.trials(), st.partial_idx()
    assert best_and_median(trials, partial=partial)[1][-1] == r[1][0][3]


def test_archive_places_one_races_for_the_best_and_fills_the_rest_fully_scored(tmp_path, capsys):
    # archive top 2; racing.archive_places 1 keeps a candidate only while it could be the best:
    # one that could only have been second stops sooner, and the second place holds the best
    # of the fully scored others (random search asks the same candidates either way)
    one = RACE.replace("}", ", archive_places: 1}")
    every = _experiment(tmp_path, racing=RACE, driver=RANDOM, budget="{max_evals: 12}")
    first = _experiment(
        tmp_path, racing=one, driver=RANDOM, budget="{max_evals: 12}", name="one.yaml"
    )
    assert search(every, tmp_path / "every") == 0
    assert search(first, tmp_path / "one") == 0
    capsys.readouterr()
    a, b = _snapshot(tmp_path / "every"), _snapshot(tmp_path / "one")
    spent_a = [m["items"] for m in _racing_meta(a[0])]
    spent_b = [m["items"] for m in _racing_meta(b[0])]
    assert [t[2] for t in a[0]] == [t[2] for t in b[0]]  # the same candidates
    assert all(x <= y for x, y in zip(spent_b, spent_a, strict=True))
    assert sum(spent_b) < sum(spent_a)
    assert len(b[1]) == 2  # both places filled, by fully scored candidates only
    full_b = {t[0] for t, m in zip(b[0], spent_b, strict=True) if m == 48}
    assert {row[2] for row in b[1]} <= full_b
    best_full = max((t for t in b[0] if t[0] in full_b), key=lambda t: (t[7], -t[0]))
    assert b[1][0][2] == best_full[0]
    assert b[1][0][1] == a[1][0][1]  # the same winner
    with RunStore.open(tmp_path / "one", readonly=True) as st:
        assert json.loads(st.config_json())["fitness"]["racing"]["archive_places"] == 1
    # more places than the archive has: refused before anything is written
    (tmp_path / "three.yaml").write_text(
        first.read_text().replace("archive_places: 1", "archive_places: 3")
    )
    with pytest.raises(UserInputError) as err:
        search(tmp_path / "three.yaml", tmp_path / "three")
    assert str(err.value) == (
        "fitness.racing.archive_places: 3 is above archive.top_k (2); give at most 2 or raise "
        "archive.top_k"
    )
    assert not (tmp_path / "three").exists()


def test_archive_places_zero_races_for_the_driver_only_and_validation_chooses(tmp_path, capsys):
    # racing.archive_places 0: no candidate is scored on to guard an archive place; the archive
    # takes the best by their means so far (estimates included), which validation re-scores
    import threading

    from evomerge.archive import rank_top_k
    from evomerge.session import open_search
    from evomerge.validation import ranking, stored

    race = "{first_slice: 8, slice: 8, settle: set, confidence: 0.8, indifference: 0.05, "
    val = "\n  validation: {items: 12}"
    paths = {}
    for name, places in (("one", 1), ("zero", 0)):
        exp = _experiment(
            tmp_path,
            racing=f"{race}archive_places: {places}}}",
            driver=CMA,
            budget="{max_evals: 18}",
            name=f"{name}.yaml",
        )
        exp.write_text(exp.read_text().replace("\ndriver:", val + "\ndriver:"))
        paths[name] = exp
        assert search(exp, tmp_path / name) == 0
    a, b = _snapshot(tmp_path / "one"), _snapshot(tmp_path / "zero")
    items = [[m["items"] for m in _racing_meta(run[0])] for run in (a, b)]
    # the same first generation; archive_places 1 scores its best on to every item, 0 does not
    assert [t[3] for t in a[0][:6]] == [t[3] for t in b[0][:6]]
    assert max(items[0]) == 48 and max(items[1]) < 48
    assert sum(items[1]) < sum(items[0])
    partial = {t[0] for t, n in zip(b[0], items[1], strict=True) if n < 48}
    want = rank_top_k(((t[7], t[0], t[2]) for t in b[0]), 2)  # every candidate, by fitness
    assert [(row[1], row[2]) for row in b[1]] == [(e.digest, e.idx) for e in want]
    assert {row[2] for row in b[1]} <= partial  # the archive holds estimates
    with RunStore.open(tmp_path / "zero", readonly=True) as st:
        assert set(stored(st)) == {row[1] for row in b[1]}  # every member validated
        ranked = ranking(st)
    assert ranked.by == "validation score"
    assert all(m.estimate for m in ranked.members)
    capsys.readouterr()
    assert status(tmp_path / "zero") == 0
    assert "(estimate)  gap" in capsys.readouterr().out
    from evomerge.report import write_report

    write_report(tmp_path / "zero", tmp_path / "rep")
    report = (tmp_path / "rep/report.md").read_text()
    assert f"best fitness: {b[1][0][3]:.4f} (estimate) (" in report
    # the per-task table marks the archive's estimates too, and only those
    assert f"| #1 merge `{b[1][0][1][:12]}` | {b[1][0][3]:.4f} (estimate) |" in report
    assert report.count("(estimate) |") == 2 * len(b[1])  # validation and per-task rows
    # interrupted after its first generation and resumed: the same archive, the same run
    stop = threading.Event()
    s = open_search(load_experiment(paths["zero"]), tmp_path / "again", stop_event=stop)
    s.loop.on_generation = lambda p: stop.set()
    assert s.run().stop_reason == "interrupted"
    from evomerge.commands.progress import progress_line

    # the live line marks a best that is a mean over part of the items, as status does
    assert s.loop.progress().best_estimate
    assert progress_line(s.loop.progress()).startswith("gen 1 best 0.")
    assert " (estimate) failed 0 items " in progress_line(s.loop.progress())
    assert resume(tmp_path / "again") == 0
    assert _snapshot(tmp_path / "again") == b
    # without validation an estimate would be the winner: refused
    tasks = [{"kind": "zoo", "evaluator": "skills", "options": {"limit": 12}}]
    with pytest.raises(UserInputError) as err:
        parse_fitness_config({"tasks": tasks, "racing": {"archive_places": 0}})
    assert str(err.value).endswith(
        "racing.archive_places: 0 lets candidates into the archive on a mean over part of the "
        "items, which only fitness.validation re-scores; set fitness.validation or "
        "archive_places: 1 or more"
    )


def test_best_so_far_leaves_out_estimates_and_the_median_keeps_them():
    from evomerge.report import best_and_median
    from evomerge.store import Trial
    from evomerge.workers.base import OK

    def trial(idx: int, generation: int, fitness: float) -> Trial:
        return Trial(
            idx, generation, f"d{idx}", (), "", None, OK, fitness, (fitness,), {}, None, 0, ""
        )

    # generation 0: a fully scored 0.4 and a lucky first slice at 0.9 (stopped early)
    trials = [trial(0, 0, 0.4), trial(1, 0, 0.9), trial(2, 1, 0.5), trial(3, 1, 0.3)]
    xs, best, med = best_and_median(trials, partial={1})
    assert xs == [2, 4] and best == [0.4, 0.5]
    assert med == [0.65, 0.4]  # the estimate is still the candidate's value for the median
    assert best_and_median(trials)[1] == [0.9, 0.9]  # without the set: what the report showed


def test_generation_order_races_each_generation_on_its_own_items(tmp_path, capsys):
    # random search asks the same candidates with or without racing: a candidate stopped in
    # generation g was told the mean of its plain item values over the first items of g's order
    plain_exp = _experiment(tmp_path, racing=None, driver=RANDOM, budget="{max_evals: 12}")
    race = "{first_slice: 8, slice: 8, order: generation}"
    race_exp = _experiment(
        tmp_path, racing=race, driver=RANDOM, budget="{max_evals: 12}", name="race.yaml"
    )
    assert search(plain_exp, tmp_path / "plain") == 0
    assert search(race_exp, tmp_path / "race") == 0
    capsys.readouterr()
    trials = _snapshot(tmp_path / "race")[0]
    cfg = load_experiment(race_exp)
    pool = ItemPool.build(build_fitness(cfg.fitness), cfg.seed)
    checked = set()
    with RunStore.open(tmp_path / "plain", readonly=True) as st:
        for t, m in zip(trials, _racing_meta(trials), strict=True):
            if m["items"] == m["of"]:
                continue
            g = pool.for_generation(t[1])
            first = g.full_values(st.eval_result(t[0]))[: m["items"]]
            assert np.isclose(t[7], first.mean()), (t[0], t[1])
            checked.add(t[1])
    assert checked == {0, 1}, "racing stopped no candidate early in some generation"


def test_off_switch_is_byte_identical_to_no_racing(tmp_path, capsys):
    none = _experiment(tmp_path, racing=None, driver=CMA, budget="{max_evals: 12}")
    off = _experiment(
        tmp_path, racing="{enabled: false}", driver=CMA, budget="{max_evals: 12}", name="off.yaml"
    )
    assert search(none, tmp_path / "none") == 0
    assert search(off, tmp_path / "off") == 0
    capsys.readouterr()
    a, b = _snapshot(tmp_path / "none"), _snapshot(tmp_path / "off")
    assert a == b
    assert all(json.loads(t[5]) == {} for t in a[0])  # no racing meta at all
    with RunStore.open(tmp_path / "none", readonly=True) as st:
        assert "racing" not in json.loads(st.config_json())["fitness"]
        assert "max_item_evals" not in json.loads(st.config_json())["budget"]


def test_item_budget_stops_the_search(tmp_path, capsys):
    exp = _experiment(tmp_path, racing=RACE, driver=CMA, budget="{max_item_evals: 300}")
    assert search(exp, tmp_path / "run") == 0
    out = capsys.readouterr().out
    assert "stopped: max_item_evals" in out
    trials, _, counts = _snapshot(tmp_path / "run")
    spent = [m["items"] for m in _racing_meta(trials)]
    per_gen = 6 * 48
    assert 300 <= sum(spent) < 300 + per_gen  # checked at each generation boundary
    assert sum(spent[:-6]) < 300  # the generation before the last had not reached it
    # the stop says what was spent against the item budget, in the search and in status
    n = len(spent)
    assert f"stopped: max_item_evals; {n} evaluations, {sum(spent)} item evaluations of 300" in out
    assert status(tmp_path / "run") == 0
    shown = capsys.readouterr().out
    assert "budget.max_item_evals reached (checked at generation ends" in shown
    assert f"{sum(spent)} item evaluations of 300, 0 failed" in shown


def _kill_at_random(cmd: list[str], run: Path, rng: random.Random) -> bool:
    # inside the next generation, mid-race
    return kill_at_random(cmd, run, rng, ENV, within_s=1.5, deadline_s=300)


_cli = cli


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    # a zoo task (items averaged) and a perplexity task (a ratio of sums, racing.md) in one pool;
    # four generations: three chances to kill mid-race (a kill lands in the generation after a
    # commit, so the last one never is), of which two must land. order "generation": each
    # generation is raced on its own item order, which resume must find again; settle "set" and
    # archive_places 1 (of top_k 2) stop more candidates mid-race. The default order's resume:
    # test_racing_lm_eval.py
    ppl = "max_length: 16, max_windows: 24"
    race = "{first_slice: 8, slice: 8, order: generation, settle: set, archive_places: 1}"
    exp = _experiment(tmp_path, racing=race, driver=CMA, budget="{max_evals: 24}", ppl=ppl)
    full = tmp_path / "full"
    done = subprocess.run(
        _cli("search", str(exp), "--run-dir", str(full)), env=ENV, text=True, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    killed, rng = tmp_path / "killed", random.Random(7)
    running = _kill_at_random(_cli("search", str(exp), "--run-dir", str(killed)), killed, rng)
    kills = int(running)
    while running and kills < 6:
        running = _kill_at_random(_cli("resume", str(killed)), killed, rng)
        kills += running
    if running:
        last = subprocess.run(_cli("resume", str(killed)), env=ENV, capture_output=True, text=True)
        assert last.returncode == 0, last.stderr
    assert kills >= 2
    a, b = _snapshot(full), _snapshot(killed)
    assert a == b
    assert any(m["items"] < m["of"] for m in _racing_meta(a[0]))  # racing did stop some


# ---- refusals -----------------------------------------------------------------------------------
def test_racing_is_refused_where_it_cannot_work(tmp_path):
    m2n2 = _experiment(
        tmp_path,
        racing=RACE,
        driver="{name: m2n2, options: {batch_size: 4}}",
        budget="{max_evals: 4}",
    )
    with pytest.raises(UserInputError) as err:
        search(m2n2, tmp_path / "m")
    assert str(err.value) == (
        "fitness.racing: driver m2n2 competes on every candidate's per-item scores (its "
        "resource competition); remove fitness.racing (or set enabled: false) or use cma_es, "
        "random or optuna"
    )
    assert not (tmp_path / "m").exists()
    # a first slice as large as the pool (4 skills x 12 items) would race nothing
    whole = _experiment(
        tmp_path, racing="{first_slice: 48}", driver=RANDOM, budget="{max_evals: 4}", name="w.yaml"
    )
    with pytest.raises(UserInputError) as err:
        search(whole, tmp_path / "w")
    assert str(err.value) == (
        "fitness.racing.first_slice: 48 is not below the 48 search items of the fitness, so "
        "racing would score every candidate on every item; give a smaller first slice (e.g. 9) "
        "or remove fitness.racing"
    )
    assert not (tmp_path / "w").exists()
    # lm_eval, perplexity and opted-in python tasks race (test_racing_lm_eval.py,
    # test_racing_perplexity.py, test_fitness.py); perplexity must say how many windows
    lm = {"kind": "lm_eval", "task": "zoo_cipher", "include_path": "fitness/zoo_cipher", "limit": 8}
    ppl = {"kind": "perplexity", "text_file": "fitness/calibration/lm-skills.txt"}
    with pytest.raises(UserInputError) as err:
        parse_fitness_config({"tasks": [lm, ppl], "racing": {}})
    assert "\n" not in str(err.value) and str(err.value).endswith(
        "tasks.1.max_windows: racing scores a perplexity task's windows a slice at a time and "
        "must know how many it scores; set max_windows (or remove fitness.racing)"
    )
    parse_fitness_config({"tasks": [lm, {**ppl, "max_windows": 8}], "racing": {}})
    digits = {"kind": "zoo", "evaluator": "digits"}
    with pytest.raises(UserInputError, match=r"\(zoo evaluator 'digits' cannot\)"):
        parse_fitness_config({"tasks": [digits], "racing": {}})
    two = [
        {"kind": "zoo", "name": "a", "evaluator": "zoo_sort", "objective": "a"},
        {"kind": "zoo", "name": "b", "evaluator": "zoo_cipher", "objective": "b"},
    ]
    with pytest.raises(UserInputError, match=r"racing: the fitness has 2 objectives"):
        parse_fitness_config({"tasks": two, "racing": {}})
    parse_fitness_config({"tasks": two, "racing": {"enabled": False}})  # off: no check
