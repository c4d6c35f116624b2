"""MoE expert merging (evomerge/moe/, docs/moe.md): MC-SMoE, Sub-MoE and the group average on
hand-checked cases, then end to end on the quick lm-moe zoo through `evomerge moe-reduce`: the
reduced folder loads with transformers, has the experts asked for, and still scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.moe import mc_smoe, sub_moe
from evomerge.moe.experts import Expert
from evomerge.moe.grouping import dominant_groups
from evomerge.moe.merged_layer import group_weights, weighted_sum
from evomerge.moe.permutation import match_neurons, permute
from evomerge.moe.routing_stats import frequency_from_logits

CALIB = Path(__file__).parents[1] / "fitness" / "calibration" / "lm-moe.txt"
H, INTER = 6, 5


def random_expert(seed: int) -> Expert:
    g = torch.Generator().manual_seed(seed)
    return Expert(*(torch.randn(s, generator=g) for s in ((INTER, H), (INTER, H), (H, INTER))))


def assert_same_expert(a: Expert, b: Expert, atol: float = 1e-5) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


def test_frequency_counts_each_top_k_choice():
    # token 0 picks experts 2 and 0, token 1 picks 1 and 2, token 2 picks 2 and 3
    logits = torch.tensor([[3.0, 0.0, 5.0, -1.0], [0.0, 4.0, 2.0, 1.0], [0.0, 0.0, 9.0, 8.0]])
    assert frequency_from_logits(logits, 2).tolist() == [1.0, 1.0, 3.0, 1.0]
    assert group_weights(torch.tensor([0.1, 0.3, 0.6]), [2, 1]).tolist() == [
        pytest.approx(2 / 3),
        pytest.approx(1 / 3),
    ]
    assert group_weights(torch.zeros(3), [0, 2]).tolist() == [0.5, 0.5]  # never chosen: uniform


def test_dominant_groups_follow_frequency_and_router_logit_similarity():
    # experts 0 and 3 are used most; 1's logits move with 3's, 2's with 0's
    base = torch.linspace(-1, 1, 10)
    logits = torch.stack([base, -base + 0.1, base + 0.3 * base**2, -base, base + 0.05], dim=1)
    freq = torch.tensor([0.4, 0.1, 0.1, 0.3, 0.1])
    groups = dominant_groups(freq, logits, keep=2)
    assert groups == [[0, 2, 4], [3, 1]]


def test_weight_matching_recovers_a_permutation():
    ex = random_expert(0)
    perm = torch.randperm(INTER, generator=torch.Generator().manual_seed(1))
    shuffled = permute(ex, perm)
    assert_same_expert(permute(shuffled, match_neurons(ex, shuffled)), ex, atol=0)
    x = torch.randn(4, H)
    torch.testing.assert_close(shuffled(x), ex(x))  # permuting neurons keeps the function


def test_identical_experts_merge_to_the_same_expert():
    ex = random_expert(0)
    perm = torch.randperm(INTER, generator=torch.Generator().manual_seed(2))
    freq = torch.tensor([0.7, 0.3])
    # MC-SMoE aligns the permuted copy first: the merge is the expert itself, not a blur of it
    assert_same_expert(mc_smoe.merge_group([ex, permute(ex, perm)], [0, 1], freq), ex)
    blurred = mc_smoe.merge_group([ex, permute(ex, perm)], [0, 1], freq, align=False)
    assert not torch.allclose(blurred.gate, ex.gate, atol=1e-2)  # the alignment did the work
    assert_same_expert(sub_moe.merge_group([ex, ex], [0, 1], freq, 1.0), ex)
    assert_same_expert(weighted_sum([ex, ex], torch.tensor([0.5, 0.5])), ex)


def test_joint_svd_shares_u_and_reconstructs_each_matrix_at_full_rank():
    mats = [random_expert(s).down for s in range(3)]  # each [H, I]
    u, s, vs = sub_moe.joint_svd(mats)
    torch.testing.assert_close(u.T @ u, torch.eye(len(s), dtype=u.dtype))
    for m, v in zip(mats, vs):
        torch.testing.assert_close((u * s) @ v.T, m.double())


def test_sub_moe_is_the_frequency_average_at_full_rank_and_its_projection_below():
    experts = [random_expert(s) for s in range(3)]
    freq = torch.tensor([0.5, 0.3, 0.2])
    avg = weighted_sum(experts, freq)
    assert_same_expert(sub_moe.merge_group(experts, [0, 1, 2], freq, 1.0), avg)
    half = sub_moe.merge_group(experts, [0, 1, 2], freq, 0.5)
    u, _, _ = sub_moe.joint_svd([ex.down for ex in experts])
    ur = u[:, : H // 2].float()
    torch.testing.assert_close(half.down, ur @ ur.T @ avg.down, atol=1e-5, rtol=0)
    assert not torch.allclose(half.down, avg.down, atol=1e-3)


def test_methods_are_listed():
    from evomerge.catalog import catalog

    assert catalog("moe") == ["moe (evomerge moe-reduce --method NAME): mc-smoe, sub-moe, average"]


def test_calibration_file_is_the_zoo_training_mixture():
    from evomerge.zoo.calibration import calibration_lines

    assert CALIB.read_text().splitlines() == calibration_lines("lm-moe")


@pytest.fixture(scope="module")
def moe_zoo() -> Path:
    from evomerge.zoo.build import build

    return build("lm-moe", quick=True, progress=False) / "moe"


@pytest.fixture(scope="module")
def calibration_64(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "lines.txt"
    path.write_text("\n".join(CALIB.read_text().splitlines()[:64]) + "\n")
    return path


def _score(folder: Path, task: str = "zoo_cipher") -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.zoo.evaluate import evaluate_lm_task, task_dir

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    return evaluate_lm_task(
        model, AutoTokenizer.from_pretrained(str(folder)), task_dir(task), 50
    ).score


@pytest.mark.parametrize("method,keep", [("sub-moe", 6), ("mc-smoe", 4)])
def test_moe_reduce_writes_a_smaller_mixtral_that_loads_and_scores(
    moe_zoo, calibration_64, tmp_path, method, keep
):
    out = tmp_path / "reduced"
    res = CliRunner().invoke(
        app,
        ["moe-reduce", str(moe_zoo), str(out), "--method", method, "--keep", str(keep)]
        + ["--calibration", str(calibration_64)],
    )
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_local_experts"] == keep and cfg["model_type"] == "mixtral"
    report = json.loads((out / "moe_reduction.json").read_text())
    for layer in report["layers"]:  # every original expert in exactly one group
        assert sorted(e for g in layer["groups"] for e in g) == list(range(8))
        assert len(layer["groups"]) == keep
    # the quick zoo ciphers well (cipher is its first-learned skill); chance is 0 exact matches
    assert _score(out) > 0.3


def test_moe_reduce_user_errors_are_one_line(moe_zoo, calibration_64, tmp_path):
    from tests.helpers.tiny_models import make_tiny_llama_family

    llama, _ = make_tiny_llama_family(tmp_path / "llama", n_experts=0, layers=1)
    cases = [
        ([str(moe_zoo), "--method", "nope", "--keep", "4"], "--method 'nope' is unknown"),
        ([str(moe_zoo), "--method", "average", "--keep", "1"], "--keep 1"),
        ([str(moe_zoo), "--method", "average", "--keep", "8"], "keep between 2 and 7"),
        ([llama, "--method", "average", "--keep", "2"], "Mixtral-style"),
        (
            [str(moe_zoo), "--method", "average", "--keep", "4", "--rank-fraction", "0.5"],
            "sub-moe only",
        ),
        ([str(moe_zoo), "--method", "sub-moe", "--keep", "4", "--rank-fraction", "0"], "in (0, 1]"),
        ([str(moe_zoo), "--method", "mc-smoe", "--keep", "4", "--compress", "rank=8"], "sparsity"),
        (
            [str(moe_zoo), "--method", "mc-smoe", "--keep", "4", "--compress", "rank=8,spars=1"],
            "--compress 'spars=1'",
        ),
        (
            [str(moe_zoo), "--method", "mc-smoe", "--keep", "4", "--compress", "rank=8,sparsity=2"],
            "in [0, 1]",
        ),
        (
            [
                str(moe_zoo),
                "--method",
                "mc-smoe",
                "--keep",
                "4",
                "--compress",
                "rank=8,sparsity=0.9,form=packed",
            ],
            "--compress form=packed: give form=dense",
        ),
        (
            [
                str(moe_zoo),
                "--method",
                "mc-smoe",
                "--keep",
                "4",
                "--compress",
                "rank=8,sparsity=0.5,steps=2",
            ],
            "steps=2: give at least 3",
        ),
        (
            [
                str(moe_zoo),
                "--method",
                "mc-smoe",
                "--keep",
                "4",
                "--compress",
                "rank=96,sparsity=0",
            ],
            "rank below 96",
        ),
        (
            [str(moe_zoo), "--method", "average", "--keep", "4", "--compress", "rank=8,sparsity=0"],
            "--method mc-smoe",
        ),
        (
            [str(moe_zoo), "--method", "mc-smoe", "--keep", "4", "--finetune", "x.txt"],
            "only used with --compress",
        ),
    ]
    for args, expected in cases:
        res = CliRunner().invoke(
            app,
            ["moe-reduce", args[0], str(tmp_path / "o"), *args[1:]]
            + ["--calibration", str(calibration_64)],
        )
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and expected in lines[0], res.output
    res = CliRunner().invoke(
        app,
        ["moe-reduce", str(moe_zoo), str(tmp_path / "o"), "--method", "average", "--keep", "4"]
        + ["--calibration", str(tmp_path / "missing.txt")],
    )
    assert res.exit_code == 2 and "calibration.file" in res.output


def test_compression_pieces_follow_the_authors_code():
    from evomerge.moe.compress import low_rank_split
    from evomerge.moe.compress_prune import RowPruner, keep_fraction

    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, generator=g) @ torch.randn(3, 6, generator=g)  # rank 3
    left, right = low_rank_split(w, 3)
    torch.testing.assert_close(left @ right, w, atol=1e-5, rtol=0)
    assert left.shape == (8, 3) and right.shape == (3, 6)
    # cubic schedule, warmup 10 of 100 steps: nothing pruned up to step 10, the final share for
    # the last 40 steps, halfway through the ramp final + (1 - final) / 8
    assert keep_fraction(10, 100, 0.1, 10) == (1.0, False)
    assert keep_fraction(61, 100, 0.1, 10) == (0.1, True)
    assert keep_fraction(35, 100, 0.1, 10)[0] == pytest.approx(0.1 + 0.9 * 0.5**3)
    # rows go whole, by the moving average of |s * grad| (one step behind), over all matrices
    a = torch.nn.Parameter(torch.ones(1, 2, 4))  # 2 rows of 4 entries
    b = torch.nn.Parameter(torch.ones(1, 2, 4))
    pruner = RowPruner({"a": a, "b": b})
    for _ in range(2):  # the second update folds in the sensitivities of the first
        a.grad = torch.tensor([[[1.0] * 4, [0.1] * 4]])
        b.grad = torch.tensor([[[0.5] * 4, [0.2] * 4]])
        pruner.update()
    # k = floor(16 * (1 - 0.4)) = 9: the 9th smallest entry score is row b0's; rows below it go
    # (the authors' kthvalue and strict <): a1 and b1
    pruner.mask(0.4)
    assert pruner.kept["a"].tolist() == [[True, False]] and pruner.kept["b"].tolist() == [
        [True, False]
    ]
    assert a[0, 1].abs().sum() == 0 and a[0, 0].abs().sum() == 4 and pruner.kept_share() == 0.5


def test_moe_reduce_compress_stores_fewer_parameters_and_still_scores(mc_smoe_compressed):
    from safetensors.torch import load_file

    from evomerge.moe.compress_store import FACTORS_FILE, dense_from_factors

    out = mc_smoe_compressed  # moe-reduce --keep 4 --compress rank=16,sparsity=0.9,steps=20
    rank, sparsity = 16, 0.9
    report = json.loads((out / "moe_reduction.json").read_text())["compression"]
    factors = load_file(str(out / FACTORS_FILE))
    h, inter, experts = 96, 128, 2 * 4  # lm-moe: hidden 96, width 128; 2 layers x 4 experts
    # the factored form is what was stated: rank-16 L and R for each of the 3 matrices of each
    # expert, plus the surviving rows of S (about 10% of S's entries, whole rows)
    low_rank = experts * 3 * rank * (h + inter)
    sparse = sum(v.numel() for k, v in factors.items() if k.endswith(".sparse_rows"))
    assert abs(sparse / (experts * 3 * h * inter) - (1 - sparsity)) < 0.01
    expert_params = sum(v.numel() for k, v in factors.items() if not k.endswith("_index"))
    assert expert_params == low_rank + sparse
    params = report["parameters"]
    dense_experts = experts * 3 * h * inter
    assert params["factored"] == params["dense_folder"] - dense_experts + low_rank + sparse
    # 53% of the 4-expert folder, 30% of the 8-expert original
    assert params["factored"] < 0.55 * params["dense_folder"] < 0.32 * params["original"]
    assert report["factors_file_bytes"] == (out / FACTORS_FILE).stat().st_size
    # the dense folder holds exactly the products of the stored factors
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        w2 = f.get_tensor("model.layers.1.block_sparse_moe.experts.3.w2.weight")
    torch.testing.assert_close(
        dense_from_factors(factors, "layers.1.experts.3.w2", h), w2, atol=1e-5, rtol=0
    )
    # transformers loads it, and it still ciphers (the quick zoo's first skill; chance is 0)
    assert json.loads((out / "config.json").read_text())["num_local_experts"] == 4
    assert _score(out) > 0.3
