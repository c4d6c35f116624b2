"""Build a Twin-Merging model folder (Lu et al., NeurIPS 2024, arXiv 2406.15479).

1. Shared knowledge: one static merge of the experts, θ* (evomerge's merge engine, e.g. task
   arithmetic or TIES).
2. Exclusive knowledge: v_t = θ_t − θ* per expert, each matrix compressed by SVD to rank r
   (``exclusive.py``).
3. Router: trained on a few labelled prompts per expert from θ*'s representation of the prompt
   (``router_train.py``).
4. Saved as an HF folder whose ``config.json`` maps to ``modeling_twin_merging.py``, copied
   beside the weights, so transformers (``trust_remote_code=True``) and lm-eval load it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from evomerge.errors import UserInputError
from evomerge.twin.config import TwinConfig, load_prompts
from evomerge.twin.exclusive import compress, kept_fraction

MODELING = Path(__file__).with_name("modeling_twin_merging.py")
SUMMARY = "twin_merging.json"


@dataclass(frozen=True)
class TwinSummary:
    experts: list[str]
    rank: int
    shared: dict
    router_examples: int
    router_train_accuracy: float
    kept_energy: dict[str, float]  # per expert: share of ‖v_t‖² its rank-r factors keep
    bytes: int  # the saved weights


def _state(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise UserInputError(f"{folder}: no .safetensors weights; give an HF model folder")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def _llama_config(folder: str, field: str):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder)
    if cfg.model_type != "llama":
        raise UserInputError(
            f"{field}: {folder} is a {cfg.model_type!r} model; Twin-Merging here builds Llama "
            f"models only (model_type llama)"
        )
    if cfg.tie_word_embeddings:
        raise UserInputError(
            f"{field}: {folder} ties its embeddings to its LM head; Twin-Merging here needs "
            f"untied ones (tie_word_embeddings: false)"
        )
    return cfg


def shared_merge(cfg: TwinConfig, base: str, experts: dict[str, str]) -> dict[str, torch.Tensor]:
    """θ*: the static merge of every expert with ``cfg.shared``, in float32."""
    from evomerge.merge import iter_merged_tensors, plan
    from evomerge.recipe import ModelRef, Recipe

    params = dict(cfg.shared.parameters)
    try:
        recipe = Recipe(
            merge_method=cfg.shared.merge_method,
            base_model=base,
            models=[ModelRef(model=p) for p in experts.values()],
            parameters=params,
            dtype="float32",
        )
    except ValueError as err:
        raise UserInputError(f"field 'shared': {str(err).splitlines()[0]}") from None
    try:
        return {k: v.float() for k, v in iter_merged_tensors(plan(recipe))}
    except UserInputError as err:  # the engine speaks of a recipe: say where that is here
        raise UserInputError(
            f"shared merge (shared.parameters are its recipe's global 'parameters'): {err}"
        ) from None


def twin_state(
    shared: dict[str, torch.Tensor], experts: dict[str, dict[str, torch.Tensor]], rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The model's tensors: θ*'s under their own names, and per tensor the experts' exclusive
    parts stacked in router order (``.twin_b``/``.twin_a`` for matrices, ``.twin_delta`` for
    vectors); and the share of each expert's ‖v_t‖² the factors keep."""
    out: dict[str, torch.Tensor] = {}
    kept_num = dict.fromkeys(experts, 0.0)
    total = dict.fromkeys(experts, 0.0)
    for name, w in shared.items():
        out[name] = w
        module = name.removesuffix(".weight")
        deltas = {e: sd[name].float() - w for e, sd in experts.items()}
        if w.dim() == 1:
            out[f"{module}.twin_delta"] = torch.stack(list(deltas.values()))
            continue
        bs, as_ = [], []
        for e, d in deltas.items():
            b, a = compress(d, rank)
            bs.append(b)
            as_.append(a)
            energy = float(d.double().pow(2).sum())
            kept_num[e] += kept_fraction(d, rank) * energy
            total[e] += energy
        out[f"{module}.twin_b"], out[f"{module}.twin_a"] = torch.stack(bs), torch.stack(as_)
    kept = {e: (kept_num[e] / total[e] if total[e] else 1.0) for e in experts}
    return out, kept


def build_twin(
    cfg: TwinConfig, out: Path, *, base_dir: Path = Path("."), overwrite: bool = False
) -> TwinSummary:
    """Write the Twin-Merging folder of ``cfg`` to ``out`` (atomically) and return a summary."""
    from transformers import AutoTokenizer

    from evomerge.io.writer import prepare_out
    from evomerge.model_refs import resolve_model_ref
    from evomerge.twin.modeling_twin_merging import TwinMergingConfig, TwinMergingForCausalLM
    from evomerge.twin.router_train import shared_features, train_router

    out = Path(out)
    prepare_out(out, overwrite)

    def resolve(ref: str) -> str:
        return resolve_model_ref(ref if ref.startswith("zoo:") else str(base_dir / ref))

    base = resolve(cfg.base_model)
    base_cfg = _llama_config(base, "base_model")
    paths = {n: resolve(e.model) for n, e in cfg.experts.items()}
    for n, p in paths.items():
        _llama_config(p, f"experts.{n}.model")
    states = {n: _state(p) for n, p in paths.items()}
    shared = shared_merge(cfg, base, paths)
    for n, sd in states.items():
        if set(sd) != set(shared) or any(sd[k].shape != shared[k].shape for k in shared):
            raise UserInputError(
                f"experts.{n}.model: {paths[n]} does not have the base model's tensors and "
                f"shapes; Twin-Merging needs experts fine-tuned from base_model"
            )
    tensors, kept = twin_state(shared, states, cfg.rank)

    fields = {k: v for k, v in base_cfg.to_dict().items() if k not in ("model_type", "auto_map")}
    fields.update(
        twin_experts=list(cfg.experts),
        twin_rank=cfg.rank,
        twin_router_hidden=2 * base_cfg.hidden_size,  # the authors' router: 2 × embedding size
        architectures=["TwinMergingForCausalLM"],
        auto_map={
            "AutoConfig": "modeling_twin_merging.TwinMergingConfig",
            "AutoModelForCausalLM": "modeling_twin_merging.TwinMergingForCausalLM",
        },
        torch_dtype="float32",
    )
    model = TwinMergingForCausalLM(TwinMergingConfig(**fields)).float()
    missing = (
        set(model.state_dict())
        - set(tensors)
        - {k for k in model.state_dict() if k.startswith("router.")}
    )
    if missing:
        raise UserInputError(
            f"base_model: {base} lacks tensors the Llama layout needs ({sorted(missing)[0]}, "
            f"...); give a complete Llama checkpoint"
        )
    model.load_state_dict(tensors, strict=False)

    tokenizer = AutoTokenizer.from_pretrained(base)
    prompts, labels = [], []
    for i, (n, e) in enumerate(cfg.experts.items()):
        mine = load_prompts(e.prompts, cfg.router.items, base_dir, f"experts.{n}.prompts")
        prompts += mine
        labels += [i] * len(mine)
    model.eval()
    feats = shared_features(model, tokenizer, prompts)
    r = cfg.router
    accuracy = train_router(
        model.router,
        feats,
        torch.tensor(labels),
        epochs=r.epochs,
        lr=r.lr,
        batch_size=r.batch_size,
        seed=r.seed,
    )
    model.eval()

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        shutil.copyfile(MODELING, tmp / MODELING.name)
        tokenizer.save_pretrained(str(tmp))
        size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        summary = TwinSummary(
            experts=list(cfg.experts),
            rank=cfg.rank,
            shared=cfg.shared.model_dump(),
            router_examples=len(prompts),
            router_train_accuracy=accuracy,
            kept_energy=kept,
            bytes=size,
        )
        (tmp / SUMMARY).write_text(json.dumps(asdict(summary), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
