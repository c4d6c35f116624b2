"""The factored MC-SMoE folder: a model folder that holds and runs the compressed experts as
L, R and the kept rows of S (``modeling_mc_smoe.py``, saved beside the weights), so the memory
and multiply-add savings that ``moe_reduction.json`` counts are the model's, not only a count.

Two ways to get one:
- ``evomerge moe-reduce ... --compress rank=R,sparsity=X,form=factored`` writes OUT in this form;
- ``factored_from_dense(DENSE, OUT)`` rewrites a folder that ``--compress`` wrote in the default
  dense form (its ``mc_smoe_factors.safetensors`` holds the factors), without fine-tuning again.
The non-expert tensors (attention, norms, embeddings, routers, head) are the dense model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from evomerge.errors import UserInputError
from evomerge.moe.compress_store import FACTORS_FILE

MODELING = Path(__file__).with_name("modeling_mc_smoe.py")
FACTORED_TYPE = "mc_smoe_factored"
WEIGHTS_FILE = "model.safetensors"
_PARTS = ("left", "right", "sparse_rows", "sparse_index")
_MATRIX_NAMES = ("w1", "w3", "w2")


def is_factored_folder(folder: str | Path) -> bool:
    """True for a folder in the factored form (its config's model_type)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
        return cfg.get("model_type") == FACTORED_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def _factor_key(layer: int, expert: int, matrix: str) -> str:
    return f"layers.{layer}.experts.{expert}.{matrix}"  # compress_store.factor_tensors' names


def factored_state(model, factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The factored model's tensors: ``model``'s own except its dense experts, and each expert
    matrix's factors under the module that holds them (``model.layers.I.mlp.experts.E.w1.left``)."""
    state = {k: v for k, v in model.state_dict().items() if ".experts." not in k}
    for key, tensor in factors.items():
        state[f"model.{key.replace('.experts.', '.mlp.experts.', 1)}"] = tensor
    return state


def kept_rows(factors: dict[str, torch.Tensor], layers: int, experts: int) -> list:
    """[layer][expert] -> the kept rows of S of [w1, w3, w2] (the config's shapes)."""
    return [
        [
            [int(factors[f"{_factor_key(i, e, m)}.sparse_index"].numel()) for m in _MATRIX_NAMES]
            for e in range(experts)
        ]
        for i in range(layers)
    ]


def factored_model(model, factors: dict[str, torch.Tensor]):
    """The factored form of the Mixtral ``model`` whose experts ``factors`` hold (float32)."""
    from evomerge.moe.modeling_mc_smoe import McSmoeFactoredConfig, McSmoeFactoredForCausalLM

    cfg = model.config
    rank = int(factors[f"{_factor_key(0, 0, 'w1')}.left"].shape[1])
    fields = {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in ("model_type", "auto_map", "architectures", "transformers_version")
    }
    fields.update(
        mc_smoe_rank=rank,
        mc_smoe_kept_rows=kept_rows(factors, cfg.num_hidden_layers, cfg.num_local_experts),
        architectures=["McSmoeFactoredForCausalLM"],
        auto_map={
            "AutoConfig": f"{MODELING.stem}.McSmoeFactoredConfig",
            "AutoModelForCausalLM": f"{MODELING.stem}.McSmoeFactoredForCausalLM",
        },
        dtype="float32",
    )
    factored = McSmoeFactoredForCausalLM(McSmoeFactoredConfig(**fields)).float()
    factored.load_state_dict(factored_state(model, factors), strict=True)
    factored.generation_config = model.generation_config
    return factored.eval()


def save_factored(model, tokenizer, factors, out: Path, report: dict, overwrite=False) -> Path:
    """Write ``out`` as the factored folder: weights, config (``auto_map``), the modelling file,
    tokenizer and ``moe_reduction.json`` (its ``compression`` section gets the form and the
    weights file's bytes)."""
    from evomerge.moe.reduce import save_reduced

    def with_bytes(tmp: Path) -> dict:
        report["compression"]["form"] = "factored"
        report["compression"]["factored_folder_bytes"] = (tmp / WEIGHTS_FILE).stat().st_size
        return report

    return save_reduced(
        factored_model(model, factors),
        tokenizer,
        out,
        with_bytes,
        overwrite=overwrite,
        extra_files={MODELING.name: MODELING.read_bytes()},
    )


def factored_from_dense(dense: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Rewrite a folder that ``moe-reduce --compress`` wrote in the dense form as the factored
    form (the factors file it holds, the rest of its weights); nothing is fine-tuned again."""
    from safetensors.torch import load_file

    from evomerge.moe.reduce import REPORT_FILE, load_moe

    dense = Path(dense)
    if not (dense / FACTORS_FILE).is_file() or not (dense / REPORT_FILE).is_file():
        raise UserInputError(
            f"{dense}: no {FACTORS_FILE} and {REPORT_FILE}; give a folder written by "
            "evomerge moe-reduce --compress"
        )
    model, tokenizer = load_moe(str(dense))
    report = json.loads((dense / REPORT_FILE).read_text())
    factors = load_file(str(dense / FACTORS_FILE))
    return save_factored(model, tokenizer, factors, Path(out), report, overwrite=overwrite)
