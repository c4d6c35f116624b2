"""lm-eval in process on a tiny real Llama, on a local generate_until task built in tmp.

The task's targets are made from the model's own greedy answers on half of the items (and an
impossible answer on the other half), so the expected per-example correctness is known without
trusting lm-eval: the adapter must return exactly that pattern, for the items it says it ran.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from evomerge.errors import UserInputError
from evomerge.fitness import build_fitness, parse_fitness_config

CHARS = "\n :=+?0123456789abcdefghij"
N_ITEMS = 12
GEN = 3


def tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>", *CHARS])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=3 + len(CHARS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        # Specials and newline get logit 0; the max over 26 random char logits is > 0 (all
        # negative has probability 2**-26), so greedy answers are plain text.
        model.lm_head.weight[:4] = 0
    return model


def greedy(model, tok, prompt: str) -> str:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(GEN):
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return tok.decode(ids[0, -GEN:])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_task")
    model, tok = tiny_model(), tiny_tokenizer()
    rows = []
    for i in range(N_ITEMS):
        q = f"{i % 10}+{i // 10}="
        answer = greedy(model, tok, q)
        rows.append({"q": q, "a": answer if i % 2 == 0 else "??" + answer})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tiny_add.yaml").write_text(
        f"""task: tiny_add
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root}/data.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {GEN}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
    )
    write_racing_tasks(root)
    return {"root": root, "model": model, "tok": tok}


def write_racing_tasks(root) -> None:
    """A group of two copies of tiny_add, and tiny_add with its metric aggregated by median
    (which a slice of items cannot estimate); before any TaskManager indexes the folder."""
    base = (root / "tiny_add.yaml").read_text()
    (root / "tiny_add2.yaml").write_text(base.replace("task: tiny_add", "task: tiny_add2"))
    median = base.replace("task: tiny_add", "task: tiny_median")
    (root / "tiny_median.yaml").write_text(
        median.replace("aggregation: mean", "aggregation: median")
    )
    (root / "tiny_both.yaml").write_text("group: tiny_both\ntask: [tiny_add, tiny_add2]\n")


def _fitness(setup, **task):
    cfg = parse_fitness_config(
        {
            "tasks": [
                {
                    "kind": "lm_eval",
                    "task": "tiny_add",
                    "include_path": str(setup["root"]),
                    "batch_size": 1,
                    **task,
                }
            ]
        }
    )
    return build_fitness(cfg)


def test_per_example_correctness_full(setup):
    fit = _fitness(setup)
    res = fit(setup["model"], setup["tok"])
    ts = res.tasks["tiny_add"]
    assert ts.metric == "exact_match"
    assert ts.per_example == tuple(1.0 if i % 2 == 0 else 0.0 for i in range(N_ITEMS))
    assert ts.score == pytest.approx(0.5)
    assert fit.aggregate(res) == pytest.approx(0.5)
    assert fit.objectives(res) == (pytest.approx(0.5),)


def test_a_search_evaluation_draws_no_lm_eval_bars(setup, capfd):
    """lm-eval's two bars per call (requests built, requests run) stay off inside evomerge's
    evaluation, and lm-eval's own bars are back after it (the swap is undone)."""
    import lm_eval.api.task as lm_task
    from tqdm import tqdm

    fit = _fitness(setup)
    fit(setup["model"], setup["tok"])  # the first call loads the task (datasets' own bar)
    capfd.readouterr()
    fit(setup["model"], setup["tok"])
    err = capfd.readouterr().err
    assert "it/s]" not in err and "requests" not in err
    assert lm_task.tqdm is tqdm


def test_lm_eval_advice_that_does_not_apply_is_not_shown(setup, tmp_path, caplog):
    """lm-eval's warnings for a model object passed as `pretrained` (evomerge's resident model)
    and for a custom_dataset task (`--metadata` in lm-eval's console) are dropped; any other
    warning from the same loggers still shows."""
    import logging

    (tmp_path / "loader.py").write_text(
        "import json, pathlib, datasets\n"
        "def load(**kwargs):\n"
        f"    rows = [json.loads(x) for x in pathlib.Path({str(setup['root'] / 'data.jsonl')!r})"
        ".read_text().splitlines()]\n"
        "    return datasets.DatasetDict({'test': datasets.Dataset.from_list(rows)})\n"
    )
    rest = (setup["root"] / "tiny_add.yaml").read_text().partition("test_split:")[2]
    (tmp_path / "tiny_custom.yaml").write_text(
        "task: tiny_custom\ncustom_dataset: !function loader.load\ntest_split:" + rest
    )
    caplog.set_level(logging.WARNING)
    fit = _fitness(setup, task="tiny_custom", include_path=str(tmp_path))
    assert fit(setup["model"], setup["tok"]).tasks["tiny_custom"].score == pytest.approx(0.5)
    for name in ("lm_eval.models.huggingface", "lm_eval.api.task"):
        logging.getLogger(name).warning("a warning evomerge keeps")
    shown = [r.getMessage() for r in caplog.records if r.name.startswith("lm_eval")]
    assert shown.count("a warning evomerge keeps") == 2, shown
    assert not [m for m in shown if "pretrained" in m or "--metadata" in m], shown


def test_seeded_subsample_and_limit(setup):
    a = _fitness(setup, subsample=5, subsample_seed=1)
    res = a(setup["model"], setup["tok"])
    ids = a.runners[0].sample_ids["tiny_add"]
    assert len(ids) == 5 and ids == sorted(set(ids))
    assert res.tasks["tiny_add"].per_example == tuple(1.0 if i % 2 == 0 else 0.0 for i in ids)
    again = _fitness(setup, subsample=5, subsample_seed=1)
    assert again.runners[0].sample_ids == a.runners[0].sample_ids
    other = [_fitness(setup, subsample=5, subsample_seed=s).runners[0].sample_ids for s in (2, 3)]
    assert any(o != a.runners[0].sample_ids for o in other)
    lim = _fitness(setup, limit=3)(setup["model"], setup["tok"])
    assert lim.tasks["tiny_add"].per_example == (1.0, 0.0, 1.0)


def test_subsample_same_ids_with_the_older_task_loader(setup):
    """lm-eval's TaskManager.load (the loader since get_task_dict's deprecation) and, where a
    manager lacks it (older lm-eval), get_task_dict give the same seeded subset."""
    from evomerge.fitness import lm_eval_task

    runner = _fitness(setup, subsample=5, subsample_seed=4).runners[0]
    want = runner.sample_ids
    manager = runner.manager()
    with pytest.warns(DeprecationWarning):
        old = lm_eval_task._task_objects(_NoLoad(manager), "tiny_add")
    new = lm_eval_task._task_objects(manager, "tiny_add")
    assert list(old) == list(new) == ["tiny_add"]
    docs = [len(list(t["tiny_add"].eval_docs)) for t in (old, new)]
    assert docs == [N_ITEMS, N_ITEMS] and len(want["tiny_add"]) == 5
    runner._samples, runner._tm = None, _NoLoad(manager)  # the whole subsample, the old way
    with pytest.warns(DeprecationWarning):
        assert runner.sample_ids == want


class _NoLoad:
    """A TaskManager as older lm-eval had it: no ``load``."""

    def __init__(self, manager) -> None:
        self._m = manager

    def __getattr__(self, name: str):
        if name == "load":
            raise AttributeError(name)
        return getattr(self._m, name)


def test_offset_holds_out_the_first_docs(setup):
    """``offset`` skips each task's first docs (a held-out split): alone, with ``limit`` (the
    next n) and with a seeded ``subsample`` (drawn after it); past the end it is refused,
    naming the field."""
    run = lambda **kw: _fitness(setup, **kw)  # noqa: E731
    for kw, ids in (
        ({"offset": 7}, list(range(7, N_ITEMS))),
        ({"offset": 3, "limit": 4}, [3, 4, 5, 6]),
        ({"offset": 2, "limit": 0.5}, list(range(2, 7))),
    ):
        fit = run(**kw)
        res = fit(setup["model"], setup["tok"])
        assert fit.runners[0].sample_ids == {"tiny_add": ids}, kw
        assert res.tasks["tiny_add"].per_example == tuple(float(i % 2 == 0) for i in ids), kw
    drawn = run(offset=6, subsample=4, subsample_seed=2).runners[0].sample_ids["tiny_add"]
    assert len(drawn) == 4 and drawn == sorted(set(drawn)) and min(drawn) >= 6
    with pytest.raises(UserInputError, match="offset 12 skips all of its 12 docs"):
        run(offset=N_ITEMS)(setup["model"], setup["tok"])
    with pytest.raises(Exception, match="offset must be >= 0"):
        run(offset=-1)


def test_unknown_task_and_metric(setup):
    cfg = parse_fitness_config(
        {
            "tasks": [
                {"kind": "lm_eval", "task": "no_such_task_xyz", "include_path": str(setup["root"])}
            ]
        }
    )
    with pytest.raises(UserInputError, match="no_such_task_xyz"):
        build_fitness(cfg).runners[0].manager()
    fit = _fitness(setup, metric="accuracy", limit=2)
    with pytest.raises(UserInputError, match="exact_match"):
        fit(setup["model"], setup["tok"])
    with pytest.raises(UserInputError, match="not found"):
        _fitness(setup, include_path="/nonexistent/folder")


# ---- racing: a slice of the window at a time, on task objects built once -----------------------
GROUP = {"name": "both", "task": "tiny_both"}  # two copies of tiny_add: two entries of one runner


def test_run_items_scores_the_given_docs_as_the_full_run_does(setup, monkeypatch):
    """Racing's slices: ``run_items`` scores the window docs at the positions given, in that
    order, each exactly as a full run scores it; only the entries asked for are run; the task
    objects and the HFLM wrapper are built once and reused by every call."""
    model, tok = setup["model"], setup["tok"]
    fit = _fitness(setup, offset=2, limit=8, **GROUP)
    runner = fit.runners[0]
    full = fit(model, tok)
    assert sorted(full.tasks) == ["both/tiny_add", "both/tiny_add2"]
    assert fit.item_entries() == [("both/tiny_add", 8, 0.5), ("both/tiny_add2", 8, 0.5)]
    leaves, lm = runner.leaves(), runner._lm[2]
    # simple_evaluate's environment report ran pip and git in subprocesses on every call
    started = []
    popen = subprocess.Popen.__init__
    monkeypatch.setattr(
        subprocess.Popen,
        "__init__",
        lambda self, *a, **k: started.append(a) or popen(self, *a, **k),
    )
    want = tuple(float(i % 2 == 0) for i in range(2, 10))  # window docs 2..9
    assert full.tasks["both/tiny_add"].per_example == want
    pos = [5, 0, 7, 2]
    one = fit(model, tok, {"both/tiny_add2": pos})
    assert list(one.tasks) == ["both/tiny_add2"]  # the other entry is not run at all
    assert one.tasks["both/tiny_add2"].per_example == tuple(want[p] for p in pos)
    rest = {"both/tiny_add": [1, 3, 4, 6], "both/tiny_add2": [1, 3, 4, 6]}
    two = fit(model, tok, rest)
    assert all(t.per_example == tuple(want[p] for p in rest[e]) for e, t in two.tasks.items())
    again = build_fitness(fit.cfg).runners[0]  # a second runner of the same task: same objects
    assert runner.leaves() is leaves and again.leaves() is leaves
    assert all(a is b for a, b in zip(leaves.values(), again.leaves().values(), strict=True))
    assert runner._lm[2] is lm  # one HFLM for every call on this model
    assert fit(model, tok) == full  # the reused task objects score as the first call did
    assert started == []


def test_racing_refuses_a_metric_a_slice_cannot_estimate(setup):
    fit = _fitness(setup, task="tiny_median")
    with pytest.raises(UserInputError) as err:
        fit.item_entries()
    assert str(err.value) == (
        "fitness.racing: lm_eval task 'tiny_median' aggregates 'exact_match' with median, not "
        "a mean over items, so a slice cannot estimate it; remove fitness.racing or set the "
        "task's metric to a per-item mean"
    )
    with pytest.raises(UserInputError) as err:
        _fitness(setup, metric="accuracy").item_entries()
    assert str(err.value) == (
        "lm_eval task 'tiny_add': metric 'accuracy' is not one of its metrics; use one of "
        "['exact_match']"
    )


HUB_TASK = """task: hub_only_task
dataset_path: evomerge-tests/not-on-this-machine
test_split: test
output_type: generate_until
doc_to_text: "{{q}}"
doc_to_target: "{{a}}"
metric_list:
  - metric: exact_match
"""


def test_a_dataset_that_cannot_load_is_refused_before_the_run_folder(tmp_path):
    """A task whose dataset is on the hub, on an offline machine (the suite runs with
    HF_DATASETS_OFFLINE=1): one line naming the task and what to do, before any write (it was
    a multi-line traceback in `eval`, and in `search` every baseline failed after the run
    folder was made)."""
    from evomerge.build import open_search
    from evomerge.config import load_experiment

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hub_only_task.yaml").write_text(HUB_TASK)
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "models: [a, b]\nbase_model: base\nspace: ps_dare_ties\nbudget: {max_evals: 4}\n"
        "fitness:\n  tasks: [{kind: lm_eval, task: hub_only_task, include_path: tasks}]\n"
    )
    with pytest.raises(UserInputError) as err:
        open_search(load_experiment(exp), tmp_path / "run")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("lm_eval task 'hub_only_task': its documents could not be loaded (")
    assert "HF_DATASETS_OFFLINE=1" in text and "include_path" in text
    assert not (tmp_path / "run").exists()
