"""Fitness config, contamination guard, python plugins, perplexity, weighted aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.errors import FitnessReturnError, UserInputError
from evomerge.fitness import EvalResult, TaskScore, build_fitness, parse_fitness_config
from tests.test_fitness_lm_eval import tiny_model, tiny_tokenizer


def _cfg(*tasks, **top):
    return parse_fitness_config({"tasks": list(tasks), **top})


# ---- config and guard ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "gsm8k",
        "mmlu_abstract_algebra",
        "ARC_Challenge",
        "hellaswag",
        "truthfulqa_mc2",
        "winogrande",
        "mgsm_direct_ja",
        "humaneval",
    ],
)
def test_guard_refuses_public_benchmarks(name):
    with pytest.raises(UserInputError) as err:
        _cfg({"kind": "lm_eval", "task": name})
    msg = str(err.value)
    assert name in msg and "allow_public_benchmarks" in msg and "contaminat" in msg
    ok = _cfg({"kind": "lm_eval", "task": name}, allow_public_benchmarks=True)
    assert ok.tasks[0].task == name


def test_guard_allows_private_tasks_and_checks_names():
    assert _cfg({"kind": "lm_eval", "task": "lm_cross_private"}).labels == ["lm_cross_private"]
    with pytest.raises(UserInputError, match="public benchmark"):
        _cfg({"kind": "python", "function": "f.py:score", "name": "gsm8k"})


def test_config_errors_name_the_field():
    with pytest.raises(UserInputError, match="unknown key 'tasks.0.lmit'"):
        _cfg({"kind": "lm_eval", "task": "t", "lmit": 3})
    with pytest.raises(UserInputError, match="either 'limit'"):
        _cfg({"kind": "lm_eval", "task": "t", "limit": 3, "subsample": 2})
    with pytest.raises(UserInputError, match="path/to/file.py:function_name"):
        _cfg({"kind": "python", "function": "score"})
    with pytest.raises(UserInputError, match="distinct 'name'"):
        _cfg({"kind": "python", "function": "a.py:f"}, {"kind": "python", "function": "b.py:f"})
    with pytest.raises(UserInputError, match="extra_args may not set"):
        _cfg({"kind": "lm_eval", "task": "t", "extra_args": {"limit": 3}})
    with pytest.raises(UserInputError, match="are task fields: apply_chat_template"):
        _cfg({"kind": "lm_eval", "task": "t", "extra_args": {"fewshot_as_multiturn": True}})
    with pytest.raises(UserInputError, match="objective 'x'"):
        _cfg({"kind": "python", "function": "a.py:f", "weight": 0, "objective": "x"})


def test_python_shorthand():
    cfg = parse_fitness_config({"python": "fitness/my.py:score"})
    assert cfg.tasks[0].kind == "python" and cfg.labels == ["score"]


# ---- python plugins -----------------------------------------------------------------------------
PLUGIN = """
from evomerge.fitness.result import EvalResult, TaskScore

def as_float(model, tokenizer):
    return float(sum(p.numel() for p in model.parameters()) > 0) * 0.75

def as_dict(model, tokenizer):
    return {"a": 0.2, "b": 0.6}

def as_result(model, tokenizer):
    return EvalResult(tasks={"x": TaskScore.from_examples([1, 0, 1, 1])})

def bad_type(model, tokenizer):
    return "high"

def boom(model, tokenizer):
    raise RuntimeError("model exploded")

def by_item(model, tokenizer, items=None):
    # item i: the sign of the model's next-token logit for token i (racing's opt-in)
    import torch
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[3, 4, 5]])).logits[0, -1]
    vals = [float(logits[i] > 0) for i in (range(by_item.n_items) if items is None else items)]
    return vals if items is not None else sum(vals) / len(vals)

by_item.n_items = 12

def by_item_short(model, tokenizer, items=None):
    return [1.0]

by_item_short.n_items = 12
"""


@pytest.fixture
def plugin(tmp_path):
    f = tmp_path / "my_fit.py"
    f.write_text(PLUGIN)
    return f


def test_python_plugin_returns(plugin):
    model, tok = tiny_model(), tiny_tokenizer()
    fit = build_fitness(
        _cfg(
            {"kind": "python", "function": f"{plugin}:as_float", "weight": 1.0},
            {"kind": "python", "function": f"{plugin}:as_dict", "weight": 3.0},
            {"kind": "python", "function": f"{plugin}:as_result", "weight": 0.0},
        )
    )
    res = fit(model, tok)
    assert res.scores == {"as_float": 0.75, "as_dict/a": 0.2, "as_dict/b": 0.6, "as_result/x": 0.75}
    assert res.tasks["as_result/x"].per_example == (1.0, 0.0, 1.0, 1.0)
    # dict counts as the mean of its entries; zero weight is recorded but not scored
    assert fit.aggregate(res) == pytest.approx((1 * 0.75 + 3 * 0.4) / 4)
    assert fit.objectives(res) == (pytest.approx(fit.aggregate(res)),)


def test_python_plugin_relative_to_base_dir(plugin):
    fit = build_fitness(
        _cfg({"kind": "python", "function": "my_fit.py:as_dict"}), base_dir=plugin.parent
    )
    assert fit(tiny_model(), tiny_tokenizer()).scores == {"as_dict/a": 0.2, "as_dict/b": 0.6}


def test_python_plugin_errors(plugin, tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        build_fitness(_cfg({"kind": "python", "function": f"{tmp_path}/nope.py:f"}))
    with pytest.raises(UserInputError, match="no function 'missing'.*as_dict"):
        build_fitness(_cfg({"kind": "python", "function": f"{plugin}:missing"}))
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(UserInputError, match="importing"):
        build_fitness(_cfg({"kind": "python", "function": f"{broken}:f"}))
    fit = build_fitness(_cfg({"kind": "python", "function": f"{plugin}:bad_type"}))
    with pytest.raises(TypeError, match="returned str .*must return a finite float"):
        fit(tiny_model(), tiny_tokenizer())
    fit = build_fitness(_cfg({"kind": "python", "function": f"{plugin}:boom"}))
    with pytest.raises(RuntimeError, match="exploded"):
        fit(tiny_model(), tiny_tokenizer())


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("'abc'", "returned str 'abc'"),
        ("None", "returned None (does the function end without `return`?)"),
        ("math.nan", "returned nan"),
        ("-math.inf", "returned -inf"),
        ("True", "returned bool True"),
        ("{'a': 0.5, 'b': math.nan}", "returned 'b': nan"),
        ("{}", "returned an empty dict"),
        ("TaskScore(score=math.inf)", "returned 'ret': inf"),
    ],
)
def test_python_plugin_non_scores_name_the_function_and_what_it_must_return(
    source, shown, tmp_path
):
    from evomerge.errors import FitnessReturnError
    from evomerge.workers.job import _describe

    header = "import math\nfrom evomerge.fitness import TaskScore\n"
    (tmp_path / "ret.py").write_text(f"{header}def ret(model, tokenizer):\n    return {source}\n")
    fit = build_fitness(_cfg({"kind": "python", "function": f"{tmp_path}/ret.py:ret"}))
    with pytest.raises(FitnessReturnError) as err:
        fit(tiny_model(), tiny_tokenizer())
    msg = _describe(err.value)  # what the candidate's FAIL row stores
    assert msg.startswith(f"python fitness '{tmp_path}/ret.py:ret' {shown}"), msg
    assert "it must return a finite float" in msg and "[at " not in msg


def test_objectives_vector_and_nan(plugin):
    fit = build_fitness(
        _cfg(
            {"kind": "python", "function": f"{plugin}:as_float", "objective": "skill"},
            {"kind": "python", "function": f"{plugin}:as_dict", "objective": "lang"},
        )
    )
    res = fit(tiny_model(), tiny_tokenizer())
    assert fit.objective_names == ["skill", "lang"]
    assert fit.objectives(res) == (pytest.approx(0.75), pytest.approx(0.4))
    partial = EvalResult(tasks={"as_float": TaskScore(score=math.nan)})
    assert math.isnan(fit.aggregate(partial))
    assert math.isnan(fit.objectives(partial)[1])


# ---- perplexity ---------------------------------------------------------------------------------
def test_perplexity_matches_model_loss(tmp_path):
    model, tok = tiny_model(), tiny_tokenizer()
    text = "1+2=3\n4+5=9\nabc def ghij\n" * 3
    f = tmp_path / "heldout.txt"
    f.write_text(text)
    fit = build_fitness(_cfg({"kind": "perplexity", "text_file": str(f), "max_length": 16}))
    ts = fit(model, tok).tasks["perplexity"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    wins = [ids[i : i + 16] for i in range(0, len(ids), 16)]
    wins = [w for w in wins if len(w) >= 2]
    with torch.no_grad():
        losses = [
            model(input_ids=torch.tensor([w]), labels=torch.tensor([w])).loss.item() for w in wins
        ]
    n = [len(w) - 1 for w in wins]
    assert ts.per_example == pytest.approx([-x for x in losses], abs=1e-5)
    assert ts.score == pytest.approx(
        -sum(a * b for a, b in zip(losses, n, strict=True)) / sum(n), abs=1e-5
    )
    inv = build_fitness(
        _cfg({"kind": "perplexity", "text_file": str(f), "max_length": 16, "score": "inv_ppl"})
    )
    assert inv(model, tok).tasks["perplexity"].score == pytest.approx(math.exp(ts.score))


def test_perplexity_prefers_the_model_that_fits(tmp_path):
    # Train one tiny model briefly on the text: its fitness must exceed the untrained one's.
    model, tok = tiny_model(), tiny_tokenizer()
    text = "abcabcabcabc\n" * 8
    f = tmp_path / "t.txt"
    f.write_text(text)
    fit = build_fitness(_cfg({"kind": "perplexity", "text_file": str(f), "max_length": 32}))
    before = fit.aggregate(fit(model, tok))
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:32]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    after = fit.aggregate(fit(model, tok))
    assert after > before + 0.5


def test_perplexity_missing_file(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        build_fitness(_cfg({"kind": "perplexity", "text_file": str(tmp_path / "none.txt")}))


def test_python_task_opts_in_to_racing(plugin):
    """A function with ``n_items`` and ``items=`` scores the items asked, in that order, as its
    full run does; one that does not opt in, or returns the wrong count, fails in one line."""
    model, tok = tiny_model(), tiny_tokenizer()
    racing = {"first_slice": 4}
    cfg = parse_fitness_config(
        {"tasks": [{"kind": "python", "function": f"{plugin}:by_item"}], "racing": racing}
    )
    fit = build_fitness(cfg)
    assert fit.item_entries() == [("by_item", 12, 1.0)]
    fn = fit.runners[0].fn
    every = fn(model, tok, items=list(range(12)))
    assert 0 < sum(every) < 12  # items right and wrong: the check has teeth
    assert fit(model, tok).tasks["by_item"].score == sum(every) / 12
    pos = [7, 0, 11, 3]
    assert fit(model, tok, {"by_item": pos}).tasks["by_item"].per_example == tuple(
        every[p] for p in pos
    )
    plain = build_fitness(
        parse_fitness_config(
            {"tasks": [{"kind": "python", "function": f"{plugin}:as_float"}], "racing": racing}
        )
    )
    with pytest.raises(UserInputError) as err:
        plain.item_entries()
    assert str(err.value) == (
        f"fitness.racing: python fitness '{plugin}:as_float' cannot score a slice of its items; "
        "give the function an items=None parameter and an n_items attribute (docs/racing.md), "
        "or remove fitness.racing"
    )
    short = build_fitness(_cfg({"kind": "python", "function": f"{plugin}:by_item_short"}))
    with pytest.raises(FitnessReturnError) as err:
        short(model, tok, {"by_item_short": [1, 2]})
    assert str(err.value) == (
        f"python fitness '{plugin}:by_item_short' called with items= returned list [1.0]; it "
        "must return one finite score per item asked (2), in that order"
    )
