"""AIM (activation-informed merging): the relaxation against a hand-computed case, the base's
activation statistics against values computed independently of the hooks, and whole merges of
the real lm-skills zoo, on disk and in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evomerge.errors import UserInputError
from evomerge.merge.calibration import base_activations, calibration_blocks, input_activations
from evomerge.merge.ops import OPS
from evomerge.recipe import Calibration, ModelRef, Recipe

CALIB = Path(__file__).parents[1] / "fitness" / "calibration" / "lm-skills.txt"


def test_relaxation_by_hand():
    """θ = θ_0 + (θ_M − θ_0)(1 − (1 − ω)s), s = |a|/max|a| over the input channels."""
    base = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    expert = torch.tensor([[2.0, 0.0, 3.5], [1.0, 1.0, 3.0]])  # τ = [[1,-2,.5],[1,2,-1]]
    act = torch.tensor([1.0, -4.0, 2.0])  # s = [0.25, 1, 0.5]; ω = 0.4: factor [0.85, 0.4, 0.7]
    out = OPS["aim_task_arithmetic"].fn(
        [expert], base, generator=None, activation=act, omega=0.4, weight=[1.0], **{"lambda": 1.0}
    )
    want = torch.tensor([[1.85, 1.2, 3.35], [0.85, -0.2, 3.3]])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("inner", ["task_arithmetic", "ties", "dare_ties", "dare_linear"])
def test_omega_one_or_no_statistics_is_the_inner_merge(inner):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 6, generator=g)
    tensors = [base + 0.1 * torch.randn(8, 6, generator=g) for _ in range(3)]
    p = {**OPS[inner].defaults, "weight": [0.5, 0.3, 0.2], "density": [0.5] * 3}
    p.pop("omega", None)
    gen = (lambda: torch.Generator().manual_seed(1)) if OPS[inner].stochastic else (lambda: None)
    want = OPS[inner].fn(tensors, base, generator=gen(), **p)
    aim = OPS[f"aim_{inner}"]
    act = torch.rand(6, generator=g) + 0.1
    one = aim.fn(tensors, base, generator=gen(), activation=act, omega=1.0, **p)
    none = aim.fn(tensors, base, generator=gen(), activation=None, omega=0.0, **p)
    assert torch.equal(one, want) and torch.equal(none, want)
    # ω = 0: the most activated channel keeps the base's weights exactly
    zero = aim.fn(tensors, base, generator=gen(), activation=act, omega=0.0, **p)
    top = int(act.argmax())
    assert torch.equal(zero[:, top], base[:, top]) and not torch.equal(zero, want)


def test_omega_outside_unit_interval_is_refused():
    t = torch.ones(2, 2)
    with pytest.raises(UserInputError, match="omega"):
        OPS["aim_ties"].fn([t], t, generator=None, activation=None, omega=1.5, weight=[1.0])


def test_calibration_blocks_follow_the_authors_rule():
    from evomerge.config import resolve_model_ref
    from evomerge.workers.context import load_tokenizer

    tok = load_tokenizer(resolve_model_ref("zoo:lm-skills/base"))
    lines = ["K:1234=1234", "x" * 40, "O:AB=AB", "K:99=99"]
    n = [len(tok.encode(s)) for s in lines]
    blocks = calibration_blocks(tok, lines, samples=2, block_size=12)
    # the 40-token line is longer than a block: skipped; two samples taken (the fourth line is
    # not), concatenated and cut into blocks of 12, the remainder dropped
    ids = tok.encode(lines[0]) + tok.encode(lines[2])
    assert n[1] > 12 >= n[0] and len(blocks) == (n[0] + n[2]) // 12 == 1
    assert torch.equal(blocks[0].view(-1), torch.tensor(ids[:12]))
    with pytest.raises(UserInputError, match="calibration.block_size"):
        calibration_blocks(tok, lines[:1], samples=1, block_size=64)


def test_input_activations_equal_the_modules_inputs_computed_directly():
    from transformers import AutoModelForCausalLM

    from evomerge.config import resolve_model_ref

    folder = resolve_model_ref("zoo:lm-skills/base")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    blocks = [
        torch.randint(
            2, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(i)
        )
        for i in range(3)
    ]
    stats = input_activations(model, blocks)
    assert "model.embed_tokens" not in stats and "lm_head" in stats
    emb = model.model.embed_tokens.weight
    norm = model.model.layers[0].input_layernorm
    with torch.no_grad():
        want_norm = sum(emb[b[0]].abs().mean(0) for b in blocks)  # the first norm reads embeddings
        want_q = sum(norm(emb[b[0]]).abs().mean(0) for b in blocks)  # q_proj reads that norm
    torch.testing.assert_close(stats["model.layers.0.input_layernorm"], want_norm)
    torch.testing.assert_close(stats["model.layers.0.self_attn.q_proj"], want_q)


def _zoo():
    from evomerge.config import resolve_model_ref

    base = resolve_model_ref("zoo:lm-skills/base")
    experts = [resolve_model_ref(f"zoo:lm-skills/{m}") for m in ("cipher", "shift", "sort")]
    return base, experts


def _recipe(method, base, experts, **extra):
    per = {"weight": 1.0, "density": 0.2}
    return Recipe(
        merge_method=method,
        base_model=base,
        models=[ModelRef(model=e, parameters=per) for e in experts],
        parameters={"lambda": 1.0, **({"omega": 0.4} if method.startswith("aim") else {})},
        **extra,
    )


def test_aim_ties_merge_of_the_zoo_on_disk_and_in_place(tmp_path):
    from safetensors.torch import load_file

    from evomerge.merge.engine import run_merge
    from evomerge.workers.engine_bridge import merged_tensors
    from evomerge.workers.materialize import ExpertCache

    base, experts = _zoo()
    calib = Calibration(file=str(CALIB), block_size=64)
    run_merge(_recipe("ties", base, experts), tmp_path / "ties")
    aim = _recipe("aim_ties", base, experts, calibration=calib)
    run_merge(aim, tmp_path / "aim")
    ties, got = (
        load_file(tmp_path / "ties/model.safetensors"),
        load_file(tmp_path / "aim/model.safetensors"),
    )
    theta0 = load_file(Path(base) / "model.safetensors")
    stats = base_activations(base, calib)
    relaxed = 0
    for name, t in got.items():
        if name in stats:
            s = stats[name].abs() / stats[name].abs().max()
            want = theta0[name] + (ties[name] - theta0[name]) * (1 - 0.6 * s)
            torch.testing.assert_close(t, want, rtol=0, atol=1e-6)
            relaxed += not torch.equal(t, ties[name])
        else:  # embeddings (and biases): the inner merge as it is
            assert torch.equal(t, ties[name]), name
    assert relaxed > 20 and "lm_head.weight" in stats
    _, it = merged_tensors(aim, ExpertCache())
    assert all(torch.equal(v, got[k]) for k, v in it), "in place must equal the disk merge"


def test_missing_calibration_is_one_line_naming_it(tmp_path):
    from evomerge.merge.engine import plan

    base, experts = _zoo()
    with pytest.raises(UserInputError, match=r"calibration: \{file") as err:
        plan(_recipe("aim_ties", base, experts))
    assert "\n" not in str(err.value)
    bad = Calibration(file=str(tmp_path / "nope.txt"))
    with pytest.raises(UserInputError, match="calibration.file"):
        plan(_recipe("aim_ties", base, experts, calibration=bad))
    long = Calibration(file=str(CALIB), block_size=512)  # the zoo base has 64 positions
    with pytest.raises(UserInputError, match="calibration.block_size: 512"):
        plan(_recipe("aim_ties", base, experts, calibration=long))


def test_recipes_without_calibration_keep_their_digest():
    r = Recipe(merge_method="ties", base_model="b", models=[ModelRef(model="a")])
    assert "calibration" not in r.canonical_json()
    with_c = r.model_copy(update={"calibration": Calibration(file="c.txt")})
    assert with_c.digest() != r.digest()
    assert Recipe.from_yaml(with_c.to_yaml()).digest() == with_c.digest()


def test_parameter_space_carries_calibration_and_requires_it():
    from evomerge.spaces.config import ParameterSpaceConfig
    from evomerge.spaces.parameter import ParameterSpace

    cfg = ParameterSpaceConfig(merge_method="aim_ties", global_params=["omega"])
    with pytest.raises(UserInputError, match="space.calibration"):
        ParameterSpace(cfg, base="b", models=["b", "x", "y"], num_layers=4)
    calib = Calibration(file=str(CALIB), block_size=64)
    cfg = cfg.model_copy(update={"calibration": calib})
    space = ParameterSpace(cfg, base="b", models=["b", "x", "y"], num_layers=4)
    rec = space.decode(space.x0())
    assert rec.calibration == calib and "omega" in rec.parameters


def test_shipped_calibration_text_is_the_zoo_base_mixture():
    from evomerge.zoo.calibration import calibration_lines

    assert CALIB.read_text().splitlines() == calibration_lines("lm-skills")


def test_base_activations_are_computed_once_and_redone_when_the_text_changes(tmp_path):
    base, _ = _zoo()
    text = tmp_path / "calib.txt"
    text.write_text(CALIB.read_text())
    calib = Calibration(file=str(text), block_size=64)
    first = base_activations(base, calib)
    assert base_activations(base, calib) is first  # a search's next candidate: no forward pass
    text.write_text("\n".join(CALIB.read_text().splitlines()[:64]))  # another text
    again = base_activations(base, calib)
    assert again is not first and not torch.equal(again["lm_head.weight"], first["lm_head.weight"])
