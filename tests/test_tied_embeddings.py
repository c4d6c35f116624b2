"""Tied input/output embeddings (no ``lm_head.weight`` on disk) through every path: ``evomerge
merge`` (equal to mergekit 0.1.5), in-place search (serial and Ray workers, lm-eval on the
resident model), data-flow and hybrid paths, the archive, and tied + untied merges (mergekit's
rule, see ``evomerge.merge.tied_embeddings``). The last two run on the real SmolLM2-135M's
weights (its first 6 layers, whole vocabulary, tied head): a search, and TIES against mergekit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.config import load_experiment
from evomerge.merge.engine import run_merge
from evomerge.recipe import Recipe
from evomerge.recipe_mergekit import load_config
from evomerge.session import open_search
from evomerge.store import RunStore
from evomerge.workers.materialize import ExpertCache, Materializer
from tests.helpers.search_fixtures import SCORE_PY
from tests.helpers.tied_models import make_tied_family

HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"
REPO = Path(__file__).resolve().parents[1]

MK_CONFIGS = {
    "linear": """
        merge_method: linear
        models:
          - {model: BASE, parameters: {weight: 0.5}}
          - {model: E0, parameters: {weight: [0.1, 0.9]}}
          - {model: E1, parameters: {weight: 0.3}}
        """,
    "ties": """
        merge_method: ties
        base_model: BASE
        models:
          - {model: E0, parameters: {weight: [0.2, 0.8], density: 0.5}}
          - {model: E1, parameters: {weight: 0.6, density: 0.7}}
          - {model: E2, parameters: {weight: 0.5, density: 0.3}}
        """,
    # tied base + untied expert: the head is merged from the base's embedding and the
    # expert's head (mergekit's optional lm_head with tied_names)
    "tied_base_untied_expert": """
        merge_method: ties
        base_model: BASE
        models:
          - {model: UNTIED, parameters: {weight: 0.7, density: 0.5}}
          - {model: E1, parameters: {weight: 0.4, density: 0.6}}
        """,
    # the first listed model is tied, a later one is not: the head is still written
    "tied_first_linear": """
        merge_method: linear
        models:
          - {model: E1, parameters: {weight: 0.6}}
          - {model: UNTIED, parameters: {weight: 0.4}}
        """,
}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


@pytest.fixture(scope="module")
def fam(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_tied_family(tmp_path_factory.mktemp("tied"))


@pytest.fixture(scope="module")
def merged(fam: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Every config merged by mergekit (one subprocess) and by evomerge's engine."""
    from tests.test_merge_parity import ENV, MK_DRIVER

    root = tmp_path_factory.mktemp("tied_parity")
    names = {"BASE": fam["base"], "UNTIED": fam["untied"]}
    names.update({f"E{i}": e for i, e in enumerate(fam["experts"])})
    jobs, out = [], {}
    for key, text in MK_CONFIGS.items():
        text = textwrap.dedent(text)
        for k in sorted(names, key=len, reverse=True):
            text = text.replace(k, names[k])
        cfg = root / f"{key}.yaml"
        cfg.write_text(text + "dtype: float32\n")
        jobs.append((str(cfg), str(root / f"mk_{key}")))
        run_merge(load_config(cfg), root / f"em_{key}")
        out[key] = (root / f"mk_{key}", root / f"em_{key}")
    proc = subprocess.run(
        [sys.executable, "-c", MK_DRIVER, json.dumps(jobs)], env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _assert_same(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs)
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k].float(), atol=1e-5, rtol=0, msg=k)


@pytest.mark.parametrize("key", ["linear", "ties"])
def test_tied_merge_has_no_head_and_equals_mergekit(merged: dict, fam: dict, key: str) -> None:
    from transformers import AutoModelForCausalLM

    mk_dir, em_dir = merged[key]
    ours = _tensors(em_dir)
    assert HEAD not in ours and _config(em_dir)["tie_word_embeddings"] is True
    _assert_same(ours, _tensors(mk_dir))
    # not vacuous: the merged embedding differs from every input's
    assert all(not torch.equal(ours[EMBED], _tensors(Path(m))[EMBED]) for m in fam["experts"])
    model = AutoModelForCausalLM.from_pretrained(str(em_dir))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, ours[EMBED])


def test_tied_and_untied_follow_mergekit(merged: dict, fam: dict) -> None:
    """Tensors: mergekit's (a head whenever one source has one; a tied source gives its
    embedding). Config: untied wherever a head is written (mergekit keeps the base's flag)."""
    from transformers import AutoModelForCausalLM

    for key in ("tied_base_untied_expert", "tied_first_linear"):
        mk_dir, em_dir = merged[key]
        ours, theirs = _tensors(em_dir), _tensors(mk_dir)
        _assert_same(ours, theirs)
        assert HEAD in ours and not torch.equal(ours[HEAD], ours[EMBED])
        assert _config(em_dir)["tie_word_embeddings"] is False
        model = AutoModelForCausalLM.from_pretrained(str(em_dir))
        assert torch.equal(model.lm_head.weight, ours[HEAD])
    # mergekit's folder says "tied" yet holds a head; transformers 5 keeps that head untied,
    # so both folders load to the same model
    mk_dir, _ = merged["tied_base_untied_expert"]
    assert _config(mk_dir)["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(str(mk_dir))
    assert torch.equal(model.lm_head.weight, _tensors(mk_dir)[HEAD])


# ---- searches: every candidate materialized in place into a tied resident model ----------------
def _experiment(
    tmp: Path, fam: dict, *, workers: int, max_evals: int, lm_eval: bool, popsize: int = 3
) -> Path:
    (tmp / "score.py").write_text(SCORE_PY)
    tasks = ["{kind: python, function: score.py:score}"]
    if lm_eval:  # lm-eval generates from the resident model: its head must be the embedding
        include = REPO / "fitness" / "zoo_cipher"
        tasks.append(
            f"{{kind: lm_eval, task: zoo_cipher, include_path: {include}, limit: 3, batch_size: 4}}"
        )
    models = "\n".join(f"  - {e}" for e in fam["experts"])
    text = (
        f"""\
name: tied
models:
{models}
base_model: {fam["base"]}
space: {{kind: parameter, merge_method: ties, layer_groups: 2, params: [weight, density]}}
fitness:
  tasks:
"""
        + "".join(f"    - {t}\n" for t in tasks)
        + f"""\
driver: {{name: cma_es, options: {{popsize: {popsize}}}}}
budget: {{max_evals: {max_evals}}}
seed: 0
workers: {workers}
archive: {{top_k: 1}}
evaluation: {{timeout_s: 300}}
"""
    )
    p = tmp / "exp.yaml"
    p.write_text(text)
    return p


def _search(tmp: Path, fam: dict, **kw) -> tuple[Path, list, Path]:
    """Run a search; return (run dir, its trials, the archived winner's folder)."""
    run_dir = tmp / "run"
    open_search(load_experiment(_experiment(tmp, fam, **kw)), run_dir).run()
    with RunStore.open(run_dir, readonly=True) as store:
        trials, top = store.trials(), store.archive()[0]
    return run_dir, trials, run_dir / "archive" / top.digest


def _logits(model, n: int = 12) -> torch.Tensor:
    ids = torch.arange(3, 3 + n).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def serial_run(fam: dict, tmp_path_factory: pytest.TempPathFactory):
    return _search(tmp_path_factory.mktemp("serial"), fam, workers=1, max_evals=6, lm_eval=True)


def test_serial_search_scores_every_candidate(serial_run) -> None:
    _, trials, _ = serial_run
    assert len(trials) == 6
    assert all(t.ok for t in trials), [t.error for t in trials if not t.ok]
    assert all("zoo_cipher" in t.scores for t in trials)  # lm-eval ran on the resident model


def test_archived_winner_is_tied_and_is_the_resident_model(serial_run, fam) -> None:
    from transformers import AutoModelForCausalLM

    run_dir, _, folder = serial_run
    archived = _tensors(folder)
    assert HEAD not in archived and _config(folder)["tie_word_embeddings"] is True
    recipe = Recipe.load(folder / "recipe.yaml")
    run_merge(recipe, run_dir.parent / "again")
    again = _tensors(run_dir.parent / "again")
    assert archived.keys() == again.keys()
    assert all(torch.equal(archived[k], again[k]) for k in archived)
    resident = Materializer(ExpertCache()).materialize(recipe)
    assert resident.lm_head.weight is resident.model.embed_tokens.weight
    assert torch.equal(resident.lm_head.weight, archived[EMBED])
    loaded = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    torch.testing.assert_close(_logits(resident), _logits(loaded), atol=1e-6, rtol=0)


def test_ray_search_with_two_workers(fam: dict, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    _, trials, folder = _search(tmp_path, fam, workers=2, max_evals=6, lm_eval=False)
    assert len(trials) == 6 and all(t.ok for t in trials), [t.error for t in trials]
    assert all(t.worker.startswith("ray-") for t in trials)
    assert HEAD not in _tensors(folder) and _config(folder)["tie_word_embeddings"] is True


def test_split_placement_keeps_the_tied_head_with_the_embedding(fam: dict, serial_run) -> None:
    """A model split over devices puts a tied head on the embedding's device (one tensor)."""
    from evomerge.workers.ray_placement import PlacedMaterializer, Placement, plan_device_map

    assert plan_device_map(3, ("cuda:0", "cuda:1"), tied=True)["lm_head"] == "cuda:0"
    assert plan_device_map(3, ("cuda:0", "cuda:1"))["lm_head"] == "cuda:1"
    recipe = Recipe.load(serial_run[2] / "recipe.yaml")
    split = PlacedMaterializer(ExpertCache(), Placement(("cpu", "cpu")))
    model = split.materialize(recipe)
    assert split.device_map()["lm_head"] == split.device_map()["model.embed_tokens"]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    whole = Materializer(ExpertCache()).materialize(recipe)
    torch.testing.assert_close(_logits(model), _logits(whole), atol=1e-6, rtol=0)


# ---- data-flow and hybrid paths ------------------------------------------------------------
def _check_path_recipe(recipe: Recipe, out: Path) -> None:
    """The path merged to disk loads, is tied and generates; in place it is the same model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_merge(recipe, out)
    assert HEAD not in _tensors(out) and _config(out)["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("C:daipdj=", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, ids.shape[1] + 4)
    resident = Materializer(ExpertCache()).materialize(recipe)
    assert resident.config.num_hidden_layers == model.config.num_hidden_layers
    torch.testing.assert_close(_logits(resident), _logits(model), atol=1e-6, rtol=0)


def test_dataflow_path_of_tied_models(fam: dict, tmp_path: Path) -> None:
    import numpy as np

    from evomerge.spaces import DataflowSpace
    from evomerge.spaces.config import DataflowSpaceConfig

    models = fam["experts"][:2]
    space = DataflowSpace(
        DataflowSpaceConfig(repeats=2, scales="per_layer"), models=models, num_layers=3
    )
    x = np.random.default_rng(3).uniform(*space.bounds)
    recipe = space.decode(x)
    assert len(recipe.slices) >= 2 and {s.sources[0].model for s in recipe.slices} == set(models)
    _check_path_recipe(recipe, tmp_path / "path")


def test_hybrid_path_over_a_tied_winner(fam: dict, merged: dict, tmp_path: Path) -> None:
    import numpy as np

    from evomerge.spaces.config import HybridSpaceConfig
    from evomerge.spaces.hybrid import HybridSpace

    winner = str(merged["ties"][1])
    cfg = HybridSpaceConfig(winner=winner, partner=1, repeats=2, scales="per_layer")
    space = HybridSpace(cfg, models=fam["experts"], num_layers=3)
    recipe = space.decode(np.random.default_rng(5).uniform(*space.bounds))
    assert recipe.base_model == winner
    _check_path_recipe(recipe, tmp_path / "hybrid")


# ---- the real SmolLM2-135M ------------------------------------------------------------------
def test_smollm2_search_winner_equals_merge_of_its_export(smollm2_family, tmp_path: Path) -> None:
    from evomerge.search_cli import export

    run_dir, trials, folder = _search(
        tmp_path, smollm2_family, workers=1, max_evals=4, lm_eval=False, popsize=2
    )
    assert len(trials) == 4 and all(t.ok for t in trials), [t.error for t in trials]
    assert len({t.fitness for t in trials}) > 1  # the candidates are different models
    assert export(run_dir, tmp_path / "best.yaml", "evomerge", 1) == 0
    run_merge(Recipe.load(tmp_path / "best.yaml"), tmp_path / "merged")
    archived, merged = _tensors(folder), _tensors(tmp_path / "merged")
    assert HEAD not in archived and _config(folder)["tie_word_embeddings"] is True
    assert archived.keys() == merged.keys()
    assert all(torch.equal(archived[k], merged[k]) for k in archived)


def test_smollm2_ties_equals_mergekit_bit_for_bit(smollm2_family, tmp_path: Path) -> None:
    """TIES at density 0.4 on real bf16 task vectors (many equal magnitudes at each threshold):
    the same tensors as mergekit, whose top-k keeps torch's argsort order among the ties; the
    in-place path (fused kernel, resident cache) gives the same bits as the disk merge."""
    from tests.test_merge_parity import ENV, MK_DRIVER

    e0, e1 = smollm2_family["experts"]
    cfg = tmp_path / "ties.yaml"
    cfg.write_text(
        textwrap.dedent(f"""\
            merge_method: ties
            base_model: {smollm2_family["base"]}
            models:
              - {{model: {e0}, parameters: {{weight: 0.6, density: 0.4}}}}
              - {{model: {e1}, parameters: {{weight: 0.5, density: 0.4}}}}
            dtype: float32
            """)
    )
    jobs = [(str(cfg), str(tmp_path / "mk"))]
    proc = subprocess.run(
        [sys.executable, "-c", MK_DRIVER, json.dumps(jobs)], env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe = load_config(cfg)
    run_merge(recipe, tmp_path / "em")
    ours, theirs = _tensors(tmp_path / "em"), _tensors(tmp_path / "mk")
    assert set(ours) == set(theirs)
    first = _tensors(Path(e0))  # read once, not once per tensor
    changed = [k for k in ours if not torch.equal(ours[k], first[k].float())]
    assert len(changed) >= 12  # the experts' projections were merged
    for k in theirs:
        assert torch.equal(ours[k], theirs[k].float()), k
    cache = ExpertCache()
    resident = Materializer(cache).materialize(recipe)
    state = resident.state_dict()
    for k in ours:
        assert torch.equal(state[k], ours[k]), k
    resident = Materializer(cache).materialize(recipe)  # again, from the resident cache's order
    state = resident.state_dict()
    assert all(torch.equal(state[k], ours[k]) for k in changed)
