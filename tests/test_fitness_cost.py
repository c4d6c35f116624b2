"""benchmarks/fitness_cost.py's flags do what its docstring says, on real lm-skills zoo searches
(3 search items per task, CMA-ES popsize 8, two generations at most): ``--methods`` chooses the
rows run beside the full-scoring reference, ``--budget`` what a fraction caps (item evaluations
or candidates), ``--racing`` the stored ``fitness.racing``; and every fitness_cost command the
docs show parses."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from evomerge.store import RunStore
from evomerge.validation import stored

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import fitness_cost  # noqa: E402

pytestmark = pytest.mark.timeout(300)
RACE = "{first_slice: 4, slice: 4, settle: set, confidence: 0.7}"
ITEMS = 12  # 4 tasks x 3 search items


def _stored(run: Path) -> tuple[dict, list[dict]]:
    """The run's stored config, and each fresh candidate's meta."""
    with RunStore.open(run, readonly=True) as st:
        cfg = json.loads(st.config_json())
        rows = st.conn.execute("SELECT meta_json FROM candidates WHERE reused_from IS NULL")
        metas = [json.loads(m) for (m,) in rows]
    return cfg, metas


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    """One benchmark run: racing and subset at half the reference's 16 candidates."""
    work = tmp_path_factory.mktemp("fitness_cost")
    rows_json = tmp_path_factory.mktemp("fitness_cost_json") / "rows.json"
    tables = fitness_cost.main(_argv(work, rows_json))
    return work, tables["skills"], rows_json


def _argv(work: Path, rows_json: Path) -> list[str]:
    argv = ["--setups", "skills", "--items", "3", "--seeds", "0", "--evals", "16"]
    argv += ["--fractions", "0.5", "--methods", "racing,subset", "--budget", "candidates"]
    return [*argv, "--json", str(rows_json), "--racing", RACE, "--work", str(work)]


def _candidates(work: Path) -> dict[str, int]:
    counts = {}
    for run in sorted(work.glob("skills-*-s0")):
        with RunStore.open(run, readonly=True) as st:
            counts[run.name] = len(st.trials())
    return counts


def test_methods_choose_the_rows_beside_the_reference(raced):
    work, rows, _ = raced
    assert list(rows) == [("full", 1.0), ("racing", 0.5), ("subset", 0.5)]
    assert sorted(p.name for p in work.iterdir()) == [
        "skills-full-1.0-s0",
        "skills-racing-0.5-s0",
        "skills-subset-0.5-s0",
    ]
    assert fitness_cost.plan(["full"], [0.5, 0.2]) == [("full", 1.0), ("full", 0.5), ("full", 0.2)]
    with pytest.raises(SystemExit, match="--methods: unknown"):
        fitness_cost.plan(["ful"], [0.5])
    for _, _, held in [v for vals in rows.values() for v in vals]:
        assert 0.0 < held < 1.0  # a real held-out score of a real winner


def test_run_again_on_its_work_folder_it_continues_the_runs_there(raced, tmp_path):
    # a benchmark killed and started again with the same --work: each finished search is
    # reopened (resume), not refused as an existing run folder, and adds no candidate
    work, rows, _ = raced
    before = _candidates(work)
    again = fitness_cost.main(_argv(work, tmp_path / "again.json"))
    assert again["skills"] == rows
    assert _candidates(work) == before


def test_budget_candidates_caps_candidates_and_items_caps_item_evaluations(raced, tmp_path):
    work, rows, _ = raced
    (ref,), (race,), (sub,) = rows.values()
    assert ref[:2] == (16 * ITEMS, 16)
    assert race[1] == sub[1] == 8  # the same candidates, whatever they cost
    assert sub[0] == 8 * 4 * 2  # each on round(0.5 x 3) = 2 items per task
    assert race[0] < 8 * ITEMS  # racing stopped some before every item
    for run, cap in [("full-1.0", 16), ("racing-0.5", 8), ("subset-0.5", 8)]:
        assert _stored(work / f"skills-{run}-s0")[0]["budget"]["max_evals"] == cap
    # the default budget: half the reference's item evaluations, whatever the candidates
    exp, _ = fitness_cost.SETUPS["skills"]
    budget = fitness_cost.cap("items", 0.5, 16 * ITEMS, 16)
    spent, cands, _, _ = fitness_cost.run_one(
        exp, tmp_path / "r", 0, 3, 0.5, budget, "full", None, {}
    )
    assert budget == {"max_item_evals": 8 * ITEMS} and (spent, cands) == (8 * ITEMS, 8)
    assert _stored(tmp_path / "r")[0]["budget"]["max_item_evals"] == 8 * ITEMS


def test_racing_yaml_reaches_the_raced_search_only(raced):
    work, _, _ = raced
    cfg, metas = _stored(work / "skills-racing-0.5-s0")
    assert cfg["fitness"]["racing"] == {
        "enabled": True,
        "first_slice": 4,
        "slice": 4,
        "confidence": 0.7,
        "settle": "set",
    }
    assert all(m["racing"]["of"] == ITEMS for m in metas)
    assert any(m["racing"]["items"] < ITEMS for m in metas)
    for run in ("full-1.0", "subset-0.5"):
        cfg, metas = _stored(work / f"skills-{run}-s0")
        assert cfg["fitness"].get("racing") is None and not any("racing" in m for m in metas)


def test_the_commands_the_docs_show_parse():
    shown = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text().replace("\\\n", " ")
        shown += re.findall(r"python benchmarks/fitness_cost\.py([^\n`]*)", text)
    assert len(shown) >= 3
    for line in shown:
        args = fitness_cost.parse_args(shlex.split(line))
        fitness_cost.plan(args.methods.split(","), [float(f) for f in args.fractions.split(",")])


def test_racing_misses_rescores_what_racing_stopped(raced, tmp_path):
    """benchmarks/racing_misses.py on the raced run: a candidate that raced over every item was
    told its full score, the stopped ones were not rescored by the search, the winner is one of
    the full scores, and the figures lie in their ranges."""
    import racing_misses

    work, _, _ = raced
    exp, _ = fitness_cost.SETUPS["skills"]
    gens, winner = racing_misses.generations(work / "skills-racing-0.5-s0")
    full = racing_misses.rescore(exp, 3, gens, tmp_path)
    pairs = [(c, f) for g, fs in zip(gens, full, strict=True) for c, f in zip(g, fs, strict=True)]
    finished = [(told, f) for (_, told, stopped), f in pairs if not stopped]
    assert finished and any(stopped for (_, _, stopped), _ in pairs)
    assert all(told == pytest.approx(f) for told, f in finished)
    assert winner == pytest.approx(max(f for _, f in finished))
    out = racing_misses.misses(gens, full, winner, mu=4)
    assert out["lost"] >= -1e-12 and 0.0 < out["stopped"] < 1.0
    assert 0.0 <= out["top-mu kept"] <= 1.0 and 0.0 <= out["best stopped"] <= 1.0


def test_json_rows_pool_into_one_table(raced, tmp_path, capsys):
    """--json writes each seed's rows; --pool reports several such files as one run (seeds
    concatenated, still paired with the reference), and refuses files that do not match."""
    _, rows, rows_json = raced
    saved = json.loads(rows_json.read_text())["skills"]
    assert saved["seeds"] == [0] and saved["big"] == 16 * ITEMS
    assert {(h, f): [tuple(v) for v in vals] for h, f, vals in saved["rows"]} == rows
    other = json.loads(rows_json.read_text())
    other["skills"]["seeds"] = [1]
    for row in other["skills"]["rows"]:
        row[2] = [[spent, cands, held / 2] for spent, cands, held in row[2]]
    (tmp_path / "b.json").write_text(json.dumps(other))
    capsys.readouterr()
    pooled = fitness_cost.main(["--pool", f"{rows_json},{tmp_path / 'b.json'}"])["skills"]
    for key, vals in rows.items():
        assert pooled[key] == [vals[0], (vals[0][0], vals[0][1], vals[0][2] / 2)]
    assert "seeds [0, 1]" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="repeats seeds"):
        fitness_cost.main(["--pool", f"{rows_json},{rows_json}"])
    other["skills"]["big"] += 1
    (tmp_path / "c.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="big"):
        fitness_cost.main(["--pool", f"{rows_json},{tmp_path / 'c.json'}"])


def test_reference_rows_are_reused_not_rerun(raced, tmp_path):
    """--reference takes the full-scoring row of an earlier --json run for each seed: the
    reference search is not run again, the other rows are, and a file of another budget or
    without the seed is refused before anything runs."""
    _, rows, rows_json = raced

    def args(seeds: str = "0", evals: str = "16") -> list[str]:
        argv = ["--setups", "skills", "--items", "3", "--seeds", seeds, "--evals", evals]
        argv += ["--fractions", "0.5", "--methods", "subset", "--budget", "candidates"]
        return [*argv, "--reference", str(rows_json)]

    again = fitness_cost.main([*args(), "--work", str(tmp_path)])
    assert again["skills"][("full", 1.0)] == rows[("full", 1.0)]
    assert again["skills"][("subset", 0.5)] == rows[("subset", 0.5)]
    assert not (tmp_path / "skills-full-1.0-s0").exists()
    assert (tmp_path / "skills-subset-0.5-s0").exists()
    with pytest.raises(SystemExit, match=r"no reference row for seeds \[1\]"):
        fitness_cost.main(args(seeds="0,1"))
    with pytest.raises(SystemExit, match="skills's big 192 != 96"):
        fitness_cost.main(args(evals="8"))


def test_score_ranks_the_searches_and_leaves_held_out_exact_match(raced, tmp_path):
    """--score gold_loglik: the searches below the reference score their items by the gold
    answer's log-likelihood (stored in their config, negative values), their winners are
    scored on held-out items by exact match (in [0, 1]); the reference row stays exact match."""
    _, rows, rows_json = raced
    argv = ["--setups", "skills", "--items", "3", "--seeds", "0", "--evals", "16"]
    argv += ["--fractions", "0.5", "--methods", "subset", "--budget", "candidates"]
    argv += ["--reference", str(rows_json), "--score", "gold_loglik", "--work", str(tmp_path)]
    got = fitness_cost.main(argv)["skills"]
    assert got[("full", 1.0)] == rows[("full", 1.0)]
    cfg, _ = _stored(tmp_path / "skills-subset-0.5-s0")
    assert [t["options"]["score"] for t in cfg["fitness"]["tasks"]] == ["gold_loglik"]
    with RunStore.open(tmp_path / "skills-subset-0.5-s0", readonly=True) as st:
        assert max(t.fitness for t in st.trials()) < 0  # log-likelihoods, not accuracies
    ((_, _, held),) = got[("subset", 0.5)]
    assert 0.0 <= held <= 1.0


def test_validation_picks_each_winner_on_later_items(raced, tmp_path):
    """--validation V: every search, the reference too, keeps its top 3 and re-scores them by
    exact match on the V items per task after its window (a gold_loglik search included); the
    winner is the best there, the table counts those item evaluations apart, the held-out
    items start after them, and a --reference file without validation is refused."""
    _, _, rows_json = raced
    argv = ["--setups", "skills", "--items", "3", "--seeds", "0", "--evals", "16"]
    argv += ["--fractions", "0.5", "--methods", "subset", "--budget", "candidates"]
    argv += ["--score", "gold_loglik", "--validation", "2", "--top-k", "3"]
    got = fitness_cost.main([*argv, "--work", str(tmp_path)])["skills"]
    winners = []
    for how in ("full-1.0", "subset-0.5"):
        run = tmp_path / f"skills-{how}-s0"
        cfg, _ = _stored(run)
        assert cfg["fitness"]["validation"]["items"] == 2 and cfg["archive"]["top_k"] == 3
        with RunStore.open(run, readonly=True) as st:
            ranked = fitness_cost.ranking(st)
            assert ranked.by == fitness_cost.BY_VALIDATION and len(ranked.members) == 3
            winners.append(
                st.trials(where="WHERE c.digest = ?", params=(ranked.members[0].digest,))[0]
            )
    sub, _ = _stored(tmp_path / "skills-subset-0.5-s0")
    assert {t["validation_score"] for t in sub["fitness"]["tasks"]} == {"exact_match"}
    recipes = [fitness_cost.Recipe.from_yaml(w.recipe_yaml) for w in winners]
    exp = fitness_cost.SETUPS["skills"][0]
    again = fitness_cost.held_out(exp, tmp_path / "held", 3 + 2, recipes)  # after validation
    rows = [got[("full", 1.0)][0], got[("subset", 0.5)][0]]
    assert [held for _, _, held, _ in rows] == again
    assert [checked for *_, checked in rows] == [3 * 2 * 4] * 2  # members x items x tasks
    with pytest.raises(SystemExit, match="skills's validation None != 2"):
        fitness_cost.main([*argv, "--reference", str(rows_json)])


def test_racing_top_k_validation_race_and_driver_reach_the_raced_searches_only(tmp_path):
    """--racing-top-k K and --racing-validation YAML: the racing search keeps K members and
    races them on validation (fitness.validation.racing); the reference keeps --top-k scored
    in full; the validation column counts the items the race spent. --racing-driver YAML is
    set over the racing search's driver.options only."""
    argv = ["--setups", "skills", "--items", "3", "--seeds", "0", "--evals", "16"]
    argv += ["--fractions", "0.5", "--methods", "racing", "--budget", "candidates"]
    argv += ["--racing", RACE, "--validation", "4", "--top-k", "2", "--racing-top-k", "5"]
    argv += ["--racing-validation", "{first_slice: 4, slice: 4}", "--work", str(tmp_path)]
    argv += ["--racing-driver", "{popsize: 6}"]
    got = fitness_cost.main(argv)["skills"]
    full, _ = _stored(tmp_path / "skills-full-1.0-s0")
    raced, _ = _stored(tmp_path / "skills-racing-0.5-s0")
    assert full["archive"]["top_k"] == 2 and "racing" not in full["fitness"]["validation"]
    assert raced["archive"]["top_k"] == 5
    assert full["driver"]["options"]["popsize"] == 8 and raced["driver"]["options"]["popsize"] == 6
    assert raced["fitness"]["validation"]["racing"]["first_slice"] == 4
    with RunStore.open(tmp_path / "skills-racing-0.5-s0", readonly=True) as st:
        entries = stored(st)
        members = fitness_cost.ranking(st).members
    assert len(members) == 5 and all(entries[m.digest]["of"] == 16 for m in members)
    assert got[("racing", 0.5)][0][3] == sum(entries[m.digest]["items"] for m in members)
    assert got[("full", 1.0)][0][3] == 2 * 16
