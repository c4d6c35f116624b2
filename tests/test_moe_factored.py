"""MC-SMoE's compressed experts run in their factored form (evomerge/moe/modeling_mc_smoe.py,
docs/moe.md): the folder loads with transformers' remote code, with lm-eval and with `evomerge
eval`'s loader, computes what the dense folder computes, and holds only the factored
parameters and bytes that `moe_reduction.json` counts."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from evomerge.errors import UserInputError
from evomerge.moe.factored_folder import WEIGHTS_FILE, factored_from_dense

PROMPTS = ["cipher: abcd ->", "sort: dcba -> abcd", "reverse: hello there ->", "0123 -> 0123"]


@pytest.fixture(scope="module")
def factored(mc_smoe_compressed, tmp_path_factory) -> Path:
    return factored_from_dense(mc_smoe_compressed, tmp_path_factory.mktemp("f") / "factored")


def _logits(model, tok) -> torch.Tensor:
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.masked_fill(~batch.attention_mask.bool()[..., None], 0)


def test_factored_folder_computes_what_the_dense_folder_computes(mc_smoe_compressed, factored):
    from transformers import AutoModelForCausalLM

    from evomerge.commands.evaluate import load_model

    dense = AutoModelForCausalLM.from_pretrained(str(mc_smoe_compressed), dtype="float32").eval()
    remote = AutoModelForCausalLM.from_pretrained(
        str(factored), dtype="float32", trust_remote_code=True
    ).eval()
    assert type(remote).__module__.startswith("transformers_modules.")  # the folder's own file
    own, tok = load_model(factored)  # evomerge eval: its copy of the class, no remote code
    assert type(own).__module__ == "evomerge.moe.modeling_mc_smoe"
    expected = _logits(dense, tok)
    for model in (remote, own):
        # (x R^T) L^T + x S_kept^T against x (L R + S)^T: float32 rounding apart
        torch.testing.assert_close(_logits(model, tok), expected, atol=1e-4, rtol=1e-5)
    ids = tok(PROMPTS[:1], return_tensors="pt").input_ids
    gen = {"max_new_tokens": 6, "do_sample": False}
    assert remote.generate(ids, **gen).tolist() == dense.generate(ids, **gen).tolist()
    assert not any(p.dim() == 3 for p in remote.parameters())  # no fused [E, out, in] experts


def test_lm_eval_scores_the_factored_folder_as_the_dense_one(mc_smoe_compressed, factored):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    def loglikelihoods(folder: Path, remote: bool) -> list[float]:
        lm = HFLM(pretrained=str(folder), trust_remote_code=remote, dtype="float32", device="cpu")
        reqs = [Instance("loglikelihood", {}, (p, " abcd"), i) for i, p in enumerate(PROMPTS)]
        return [ll for ll, _ in lm.loglikelihood(reqs)]

    assert loglikelihoods(factored, True) == pytest.approx(
        loglikelihoods(mc_smoe_compressed, False), abs=1e-4
    )


def test_factored_folder_holds_the_factored_parameters_and_bytes(mc_smoe_compressed, factored):
    from evomerge.moe.modeling_mc_smoe import McSmoeFactoredForCausalLM

    report = json.loads((factored / "moe_reduction.json").read_text())["compression"]
    counts = report["parameters"]
    model = McSmoeFactoredForCausalLM.from_pretrained(str(factored))
    assert report["form"] == "factored"
    assert sum(p.numel() for p in model.parameters()) == counts["factored"]
    index = sum(b.numel() for n, b in model.named_buffers() if n.endswith("sparse_index"))
    assert index == counts["factored_row_indices"]
    # the weights file is the factored tensors (float32, int32 row numbers) and a header
    size = (factored / WEIGHTS_FILE).stat().st_size
    header = struct.unpack("<Q", (factored / WEIGHTS_FILE).read_bytes()[:8])[0]
    assert size == report["factored_folder_bytes"] == 8 + header + 4 * (counts["factored"] + index)
    dense_size = (mc_smoe_compressed / WEIGHTS_FILE).stat().st_size
    assert size < 0.6 * dense_size  # 53% of the dense folder's parameters (test_moe.py)
    cfg = json.loads((factored / "config.json").read_text())
    assert cfg["mc_smoe_rank"] == 16 and cfg["num_local_experts"] == 4
    assert (factored / "modeling_mc_smoe.py").is_file()


def test_moe_reduce_form_factored_writes_the_factored_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.helpers.moe import moe_reduce_compressed

    out = moe_reduce_compressed(tmp_path, "rank=8,sparsity=0.5,steps=3,batch=8,form=factored")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "mc_smoe_factored" and cfg["mc_smoe_rank"] == 8
    assert not (out / "mc_smoe_factors.safetensors").exists()  # the weights are the factors
    model = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    report = json.loads((out / "moe_reduction.json").read_text())["compression"]
    assert sum(p.numel() for p in model.parameters()) == report["parameters"]["factored"]
    assert report["factored_folder_bytes"] == (out / WEIGHTS_FILE).stat().st_size


def test_factored_from_dense_refuses_a_folder_without_factors(tmp_path):
    from tests.helpers.moe import lm_moe_quick

    with pytest.raises(UserInputError) as err:
        factored_from_dense(lm_moe_quick(), tmp_path / "out")
    assert "no mc_smoe_factors.safetensors" in str(err.value)
    assert "evomerge moe-reduce --compress" in str(err.value) and "\n" not in str(err.value)
