"""The LM zoo: deterministic quick builds, ordinary HF folders, and a fast evaluator that scores
exactly like lm-eval (same greedy answer per item) on the committed task folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evomerge.errors import UserInputError
from evomerge.zoo.build import build, load_manifest

REPO = Path(__file__).resolve().parents[1]
FITNESS = REPO / "fitness"


def _tensor_digests(folder: Path) -> dict[str, str]:
    from safetensors import safe_open

    out = {}
    for model in sorted(p for p in folder.iterdir() if (p / "model.safetensors").is_file()):
        with safe_open(str(model / "model.safetensors"), "pt") as f:
            for key in sorted(f.keys()):
                t = f.get_tensor(key).contiguous()
                out[f"{model.name}/{key}"] = hashlib.sha256(t.numpy().tobytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def cross_zoo(tmp_path_factory) -> Path:
    return build("lm-cross", tmp_path_factory.mktemp("zoo") / "cross", quick=True, progress=False)


# No recorded digest to compare with: the same code and seed gave b8a020bf… for this quick zoo
# in one session and fdc541f8… in a later one on another host (transformers' version was not
# recorded then; the manifest now records it). What is checked is what pinning promises: the
# bytes do not move with the CPU's instruction set or the number of threads on one host.


def test_quick_build_is_deterministic_and_cli_builds(cross_zoo, tmp_path, monkeypatch):
    from evomerge.cli import app

    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    # the second build runs as on a 1-core AVX2 host (ATen, MKL and oneDNN told so, one OpenMP
    # thread): same bytes
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for var, isa in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_CBWR", "AVX2")):
        monkeypatch.setenv(var, isa)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    res = CliRunner().invoke(
        app, ["zoo", "build", "lm-cross", "--quick", "--out", str(tmp_path / "b")]
    )
    assert res.exit_code == 0, res.output
    again = Path(res.output.strip().splitlines()[-1].strip())
    assert again == tmp_path / "b"
    first, second = _tensor_digests(cross_zoo), _tensor_digests(again)
    assert set(first) >= {"base/lm_head.weight", "skill/lm_head.weight", "language/lm_head.weight"}
    assert first == second
    manifest = load_manifest(again)
    assert set(manifest["models"]) == {"base", "skill", "language"}
    assert manifest["targets"] == ["zoo_reverse_b"]
    assert manifest["kernels"] == "pinned (portable)"
    assert set(manifest["libraries"]) == {"torch", "transformers", "numpy"}
    assert f"weights sha256 {manifest['weights_sha256'][:16]}" in res.output


def test_lm_cross_experts_move_only_their_parameters(cross_zoo):
    """The language expert moves only embeddings/final norm/head, the skill expert only the
    layers (ExpertSpec.trainable): everything else keeps the base's bits."""
    d = _tensor_digests(cross_zoo)
    keys = [k.split("/", 1)[1] for k in d if k.startswith("base/")]
    outer = {k for k in keys if ".layers." not in k}
    assert outer == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for k in keys:
        lang_moved = d[f"language/{k}"] != d[f"base/{k}"]
        skill_moved = d[f"skill/{k}"] != d[f"base/{k}"]
        assert (lang_moved, skill_moved) == ((True, False) if k in outer else (False, True)), k


def test_trainable_pattern_that_matches_nothing_is_a_clear_error():
    from evomerge.zoo.lm import LMShape, new_model
    from evomerge.zoo.train_lm import _freeze_except

    model = new_model(LMShape(layers=1, hidden=16, intermediate=32, heads=2), 20, 0)
    with pytest.raises(UserInputError, match="ExpertSpec.trainable: 'lm_hed' matches no"):
        _freeze_except(model, ("lm_hed",))


def test_zoo_folders_load_with_transformers(cross_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(cross_zoo / "language"))
    tok = AutoTokenizer.from_pretrained(str(cross_zoo / "language"))
    assert model.config.num_hidden_layers >= 4
    ids = tok("K:kmp=", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "K:kmp="
    assert len(ids) == 6  # one token per character


def test_fast_evaluator_matches_lm_eval_per_example(cross_zoo):
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.zoo.evaluate import EVALUATORS, generate_answers, load_task_items

    task, limit, folder = "zoo_copy", 20, cross_zoo / "base"
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype=float32",
        tasks=[task],
        task_manager=TaskManager(include_path=str(FITNESS), include_defaults=False),
        limit=limit,
        log_samples=True,
        device="cpu",
    )
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    lm_answers = [s["filtered_resps"][0] for s in samples]
    lm_correct = [float(s["exact_match"]) for s in samples]

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    items = load_task_items(FITNESS / task)[:limit]
    assert generate_answers(model, tok, [p for p, _ in items], 8) == lm_answers
    score = EVALUATORS[task](model, tok, limit=limit)
    assert list(score.per_example) == lm_correct
    assert 0 < score.score  # the quick base copies some items: the comparison is not all-zero


def test_gold_loglik_matches_lm_eval_loglikelihood(cross_zoo):
    """``score: gold_loglik`` is lm-eval's loglikelihood request on (prompt, answer + newline),
    item by item; the racing path (positions) gives the same values in the order asked."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.fitness.zoo_task import ZooTask
    from evomerge.zoo.evaluate import EVALUATORS, load_task_items

    task, limit, folder = "zoo_copy", 20, cross_zoo / "base"
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    items = load_task_items(FITNESS / task)[:limit]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    reqs = [Instance("loglikelihood", {}, (p, a + "\n"), i) for i, (p, a) in enumerate(items)]
    theirs = [ll for ll, _ in lm.loglikelihood(reqs)]
    ours = EVALUATORS[task](model, tok, limit=limit, score="gold_loglik")
    assert ours.metric == "gold_loglik"
    assert ours.per_example == pytest.approx(theirs, abs=1e-4)
    assert len(set(ours.per_example)) > limit // 2  # a continuous signal, not 0/1
    em = EVALUATORS[task](model, tok, limit=limit).per_example
    right = [v for v, e in zip(ours.per_example, em) if e == 1.0]
    wrong = [v for v, e in zip(ours.per_example, em) if e == 0.0]
    assert right and wrong  # the quick base gets some items right, not all
    assert sum(right) / len(right) > sum(wrong) / len(wrong)
    zoo = ZooTask("copy", task, {"limit": limit, "score": "gold_loglik"})
    pos = [13, 2, 7]
    got = zoo.run_items(model, tok, {"copy": pos})["copy"].per_example
    assert got == pytest.approx([ours.per_example[p] for p in pos], abs=1e-5)


def test_zoo_score_option_is_checked_when_the_fitness_is_built():
    from evomerge.fitness import build_fitness, parse_fitness_config

    def fit(evaluator: str, score: str):
        task = {"kind": "zoo", "evaluator": evaluator, "options": {"score": score}}
        return build_fitness(parse_fitness_config({"tasks": [task]}))

    fit("cross", "gold_loglik")
    with pytest.raises(UserInputError) as err:
        fit("cross", "loglik")
    assert str(err.value) == (
        "options.score: 'loglik' is not a zoo score; use one of: exact_match, gold_loglik"
    )
    with pytest.raises(UserInputError, match="options.score: zoo evaluator 'digits' scores"):
        fit("digits", "exact_match")
    with pytest.raises(UserInputError, match="evaluator 'backdoor_safety' scores with its own"):
        fit("backdoor_safety", "gold_loglik")


def test_evaluator_registry_covers_the_zoo():
    from evomerge.fitness.zoo_task import zoo_evaluator
    from evomerge.zoo.evaluate import EVALUATORS
    from evomerge.zoo.tasks import TASKS

    assert {"cross", "skills"} <= set(EVALUATORS) and set(TASKS) <= set(EVALUATORS)
    for name in TASKS:
        assert (FITNESS / name / "test.jsonl").is_file(), f"run write_task_folders() for {name}"
    with pytest.raises(UserInputError, match="valid: .*cross"):
        zoo_evaluator("crosss")


def test_unknown_zoo_is_a_clear_error(tmp_path):
    from evomerge.cli import app

    with pytest.raises(
        UserInputError,
        match="valid: digits, gemma3, lm-backdoor, lm-cross, lm-moe, lm-seeds, lm-skills, smollm2",
    ):
        build("lm-crosss", tmp_path / "x")
    res = CliRunner().invoke(app, ["zoo", "build", "nope", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2
    assert "zoo 'nope' is unknown" in res.output
    assert not (tmp_path / "y").exists()


def test_a_second_zoo_with_the_same_models_reuses_them(cross_zoo, tmp_path):
    """zoo/model_cache.py: a model trained once with a recipe is taken from the model cache by
    any later build that trains the same recipe (lm-backdoor takes lm-skills' base and three
    experts this way), hard-linked where the filesystem allows: the same files, no training."""
    import os

    from evomerge.io.cache import cache_root

    again = build("lm-cross", tmp_path / "again", quick=True, progress=False)
    probe = tmp_path / "probe"
    probe.write_text("x")
    try:
        os.link(probe, cache_root() / f".link-probe-{os.getpid()}")
        (cache_root() / f".link-probe-{os.getpid()}").unlink()
        linked = True
    except OSError:
        linked = False  # another filesystem: the cache copies, and only the bytes can be checked
    for model in ("base", "skill", "language"):
        a, b = cross_zoo / model / "model.safetensors", again / model / "model.safetensors"
        assert a.read_bytes() == b.read_bytes(), model
        if linked:
            assert b.stat().st_nlink >= 2, model  # the cache entry's file, not a new training


def test_a_first_build_says_so_and_a_reuse_is_silent(cross_zoo, tmp_path, capsys):
    """A zoo built on first use (a search naming zoo:..., possibly half an hour of training for
    the real experts) says where it builds and how long it took; a built one says nothing."""
    folder = build("lm-cross", tmp_path / "first", quick=True)
    err = capsys.readouterr().err
    assert f"zoo lm-cross: building it into {folder} (once: later runs reuse it)" in err
    assert "zoo lm-cross: built in " in err
    assert build("lm-cross", tmp_path / "first", quick=True) == folder
    assert capsys.readouterr().err == ""
