"""``evomerge eval MODEL|RECIPE|RUN EXPERIMENT.yaml`` on real models.

A tiny search on the lm-skills zoo (two experts, 8 evaluations) gives a run folder whose numbers
eval must reproduce by another route: the search scored the base model and its candidates on the
resident model of a worker; eval loads the base folder, the archived folders and the exported
recipe (merged again into a temporary folder) with transformers. SmolLM2 is scored once with its
chat template on the generation task and compared with a fresh lm-eval ``hf`` run.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evomerge.cli import app

REPO = Path(__file__).resolve().parents[1]
FITNESS = "fitness: {tasks: [{kind: zoo, name: skills, evaluator: skills, options: {limit: 8}}]}"


def experiment(folder: Path, fitness: str = FITNESS, name: str = "exp.yaml") -> Path:
    text = textwrap.dedent(f"""\
        name: tiny_eval
        models: [zoo:lm-skills/cipher, zoo:lm-skills/shift]
        base_model: zoo:lm-skills/base
        space: {{kind: parameter, merge_method: task_arithmetic, layer_groups: 1,
                 params: [weight]}}
        {fitness}
        driver: {{name: cma_es, options: {{popsize: 4, sigma0: 0.3}}}}
        budget: {{max_evals: 8}}
        seed: 0
        archive: {{top_k: 2}}
        """)
    p = folder / name
    p.write_text(text)
    return p


def run_eval(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, ["eval", *map(str, args)])
    return res.exit_code, res.stdout, res.stderr


def eval_json(*args: str) -> dict:
    code, out, err = run_eval(*args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from evomerge.search_cli import search
    from evomerge.store import RunStore

    root = tmp_path_factory.mktemp("eval_run")
    exp = experiment(root)
    assert search(exp, root / "run") == 0
    with RunStore.open(root / "run", readonly=True) as st:
        archive = [e.fitness for e in st.archive()]
        baselines = json.loads(st.get_meta("baselines"))
    return {"exp": exp, "dir": root / "run", "archive": archive, "baselines": baselines}


def test_model_folder_scores_as_the_search_scored_it(run):
    from evomerge.config import resolve_model_ref

    base = resolve_model_ref("zoo:lm-skills/base")
    got = eval_json(base, run["exp"])
    assert got["kind"] == "model" and got["folder"] == str(Path(base).resolve())
    assert got["fitness"] == pytest.approx(run["baselines"]["base"]["fitness"], abs=1e-12)
    assert got["tasks"]["skills/zoo_cipher"]["n"] == 8
    code, out, _ = run_eval(base, run["exp"])  # the text report
    assert code == 0 and f"fitness {got['fitness']:.4f}" in out and "skills/zoo_sort_u" in out
    # a zoo reference names the same folder (as in an experiment's models)
    by_ref = eval_json("zoo:lm-skills/base", run["exp"])
    assert by_ref["folder"] == got["folder"] and by_ref["fitness"] == got["fitness"]


def test_run_members_score_their_recorded_fitness(run):
    for rank, recorded in enumerate(run["archive"], 1):
        got = eval_json(run["dir"], run["exp"], "--rank", str(rank))
        assert (got["kind"], got["rank"]) == ("run", rank)
        assert got["fitness"] == pytest.approx(recorded, abs=1e-12)
        assert got["search_fitness"] == pytest.approx(recorded, abs=1e-12)
    assert run["archive"][0] > run["baselines"]["expert cipher"]["fitness"]  # a real merge


def test_exported_mergekit_recipe_scores_as_the_winner(run, tmp_path):
    from evomerge.search_cli import export

    assert export(run["dir"], tmp_path / "w.yaml", "mergekit") == 0
    got = eval_json(tmp_path / "w.yaml", run["exp"])
    assert got["kind"] == "recipe" and got["folder"] is None
    assert got["fitness"] == pytest.approx(run["archive"][0], abs=1e-12)


VALIDATED = FITNESS[:-1] + ", validation: {items: 8}}"


def test_split_validation_reproduces_the_winners_validation_score(tmp_path):
    """On a run whose winner was chosen on validation: rank 1 is that winner (as in export),
    and --split validation scores it on the items it was chosen on, as the run recorded."""
    from evomerge.search_cli import search
    from evomerge.store import RunStore
    from evomerge.validation import ranking

    exp = experiment(tmp_path, VALIDATED)
    assert search(exp, tmp_path / "run") == 0
    with RunStore.open(tmp_path / "run", readonly=True) as st:
        ranked = ranking(st)
    assert ranked.on_validation
    winner = ranked.members[0]
    got = eval_json(tmp_path / "run", exp, "--split", "validation")
    assert (got["split"], got["digest"], got["rank"]) == ("validation", winner.digest, 1)
    assert got["fitness"] == pytest.approx(winner.validation, abs=1e-12)
    assert got["validation_fitness"] == pytest.approx(winner.validation, abs=1e-12)
    assert got["tasks"]["skills/zoo_cipher"]["n"] == 8
    on_search = eval_json(tmp_path / "run", exp)  # the same member, on the search's items
    assert (on_search["split"], on_search["digest"]) == ("search", winner.digest)
    assert on_search["fitness"] == pytest.approx(winner.fitness, abs=1e-12)
    code, out, _ = run_eval(tmp_path / "run", exp, "--split", "validation")
    assert code == 0 and "validation items" in out
    assert f"(the search recorded {winner.validation:.4f} on validation)" in out


def test_user_errors_are_one_line_exit_2(run, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    chat = experiment(
        tmp_path,
        "fitness: {tasks: [{kind: lm_eval, task: zoo_cipher, apply_chat_template: true,"
        f" include_path: {REPO / 'fitness' / 'zoo_cipher'}, limit: 2}}]}}",
        name="chat.yaml",
    )
    cases = [
        ((tmp_path / "missing", run["exp"]), "not found"),
        ((tmp_path / "empty", run["exp"]), "neither config.json"),
        ((tmp_path / "notes.txt", run["exp"]), "not a folder or a .yaml recipe"),
        ((run["dir"], run["exp"], "--rank", "3"), "holds 2 models"),
        ((run["dir"], tmp_path / "nope.yaml"), "experiment file not found"),
        ((run["dir"], chat), "has no chat template"),
        ((run["dir"], run["exp"], "--split", "validation"), "has no fitness.validation; add"),
        ((run["dir"], run["exp"], "--split", "held_out"), "--split held_out: give search or"),
    ]
    for args, words in cases:
        code, out, err = run_eval(*args)
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1, (args, err)
        assert lines[0].startswith("error: ") and words in lines[0], (args, lines)


def test_smollm2_chat_task(smollm2_dir, tmp_path):
    from tests.test_lm_eval_parity import GEN, hf_run

    include = REPO / "fitness" / "smollm2_chat_gen"
    gen = {**GEN, "limit": 4}  # (parity on more items: test_lm_eval_parity)
    task = ", ".join(f"{k}: {json.dumps(v)}" for k, v in gen.items())
    exp = experiment(
        tmp_path, f"fitness: {{tasks: [{{kind: lm_eval, include_path: {include}, {task}}}]}}"
    )
    got = eval_json(smollm2_dir, exp)
    want = hf_run(smollm2_dir, gen)
    assert got["tasks"]["smollm2_chat_gen"]["per_example"] == want
    assert got["fitness"] == pytest.approx(sum(want) / len(want), abs=1e-12)
