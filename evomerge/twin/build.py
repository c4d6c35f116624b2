"""Build a Twin-Merging model folder (Lu et al., NeurIPS 2024, arXiv 2406.15479).

1. Shared knowledge: one static merge of the experts, θ* (evomerge's merge engine, e.g. task
   arithmetic or TIES).
2. Exclusive knowledge: v_t = θ_t − θ* per expert, each matrix compressed by SVD to rank r
   (``exclusive.py``); for LoRA experts from the adapters' factors, without forming the
   matrices (``_from_adapters``). A tied embedding is one matrix with one exclusive part, which
   the model applies at the input and at the head alike.
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
from evomerge.twin.exclusive import (
    adapter_span,
    compress,
    compress_core,
    kept_fraction,
    pad_rank,
    shared_core,
)
from evomerge.twin.sources import ExpertWeights

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
    tied_embeddings: bool
    matrices_from_adapter_factors: int  # exclusive parts taken from LoRA factors, no full SVD
    matrices_by_full_svd: int


def _check_expert(src: ExpertWeights, base_cfg, field: str, path: str) -> None:
    from evomerge.merge.tied_embeddings import ties_embeddings

    cfg = src.config
    if cfg.get("model_type") != "llama":
        raise UserInputError(
            f"{field}: {path} is a {cfg.get('model_type')!r} model; Twin-Merging here builds "
            f"Llama models only (model_type llama)"
        )
    if ties_embeddings(cfg) != bool(base_cfg.tie_word_embeddings):
        raise UserInputError(
            f"{field}: {path} has tie_word_embeddings {ties_embeddings(cfg)} but base_model has "
            f"{bool(base_cfg.tie_word_embeddings)}; give experts fine-tuned from base_model"
        )


def _llama_config(folder: str, field: str):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder)
    if cfg.model_type != "llama":
        raise UserInputError(
            f"{field}: {folder} is a {cfg.model_type!r} model; Twin-Merging here builds Llama "
            f"models only (model_type llama)"
        )
    return cfg


def shared_merge(cfg: TwinConfig, base: str, experts: dict[str, str]) -> dict[str, torch.Tensor]:
    """θ*: the static merge of every expert with ``cfg.shared``, in float32."""
    from evomerge.merge.engine import iter_merged_tensors, plan
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


@dataclass
class _Tally:
    kept: dict[str, float]
    total: dict[str, float]
    from_factors: int = 0  # matrices whose exclusive parts came from adapter factors
    full_svd: int = 0  # matrices that took the full-matrix SVD

    def add(self, expert: str, kept: float, total: float) -> None:
        self.kept[expert] += kept
        self.total[expert] += total

    def shares(self) -> dict[str, float]:
        return {e: (self.kept[e] / t if (t := self.total[e]) else 1.0) for e in self.kept}


def _from_adapters(
    name: str, w: torch.Tensor, base: torch.Tensor, experts: dict[str, ExpertWeights], rank, tally
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Every expert's v_t = θ_0 + L_t R_t − θ* of one matrix from the adapters' factors alone
    (None when they cannot give it: see ``exclusive.shared_core``). With task arithmetic,
    θ* − θ_0 = Σ_s c_s L_s R_s lies in the span of the adapters' factors, so each v_t is
    Q_L C_t Q_Rᵀ with a k × k core C_t (k = the adapters' ranks summed), and its rank-r SVD is
    the core's; no matrix of the expert is formed."""
    if any(e.factors(name) is None and e.changes(name) for e in experts.values()):
        return None  # DoRA or a tensor saved whole: not a product of factors
    factors = {n: e.factors(name) for n, e in experts.items()}
    present = [f for f in factors.values() if f is not None]
    if not present:
        return None
    q_left, q_right = adapter_span(present)
    shared_part = shared_core(w - base, q_left, q_right)
    if shared_part is None:
        return None
    bs, as_ = [], []
    r = max(1, min(rank, *w.shape))
    for n, f in factors.items():
        core = -shared_part
        if f is not None:
            core = core + (q_left.T @ f[0]) @ (f[1] @ q_right)
        b, a, kept, total = compress_core(core, q_left, q_right, r)
        b, a = pad_rank(b, a, r)
        bs.append(b)
        as_.append(a)
        tally.add(n, kept, total)
    tally.from_factors += 1
    return torch.stack(bs), torch.stack(as_)


def _by_full_svd(name, w, experts: dict[str, ExpertWeights], rank, tally):
    bs, as_ = [], []
    r = max(1, min(rank, *w.shape))
    ran = False
    for n, e in experts.items():
        d = e.read(name) - w
        energy = float(d.double().pow(2).sum())
        if energy == 0.0:  # nothing exclusive (e.g. an embedding no expert changed)
            b, a = torch.zeros(w.shape[0], r), torch.zeros(r, w.shape[1])
        else:
            b, a = compress(d, rank)
            tally.add(n, kept_fraction(d, rank) * energy, energy)
            ran = True
        bs.append(b)
        as_.append(a)
    tally.full_svd += ran
    return torch.stack(bs), torch.stack(as_)


def twin_state(
    shared: dict[str, torch.Tensor],
    experts: dict[str, ExpertWeights],
    rank: int,
    base: ExpertWeights | None = None,
) -> tuple[dict[str, torch.Tensor], _Tally]:
    """The model's tensors: θ*'s under their own names, and per tensor the experts' exclusive
    parts stacked in router order (``.twin_b``/``.twin_a`` for matrices, ``.twin_delta`` for
    vectors); and the tally of each expert's ‖v_t‖² the factors keep. With ``base`` (every
    expert a LoRA adapter over it) a matrix's parts come from the adapters' factors when the
    shared merge keeps them low rank (``_from_adapters``), else from the full-matrix SVD."""
    out: dict[str, torch.Tensor] = {}
    tally = _Tally(kept=dict.fromkeys(experts, 0.0), total=dict.fromkeys(experts, 0.0))
    for name, w in shared.items():
        out[name] = w
        module = name.removesuffix(".weight")
        if w.dim() == 1:
            out[f"{module}.twin_delta"] = torch.stack([e.read(name) - w for e in experts.values()])
            continue
        parts = None
        if base is not None:
            parts = _from_adapters(name, w, base.read(name), experts, rank, tally)
        if parts is None:
            parts = _by_full_svd(name, w, experts, rank, tally)
        out[f"{module}.twin_b"], out[f"{module}.twin_a"] = parts
    return out, tally


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
    experts = {n: ExpertWeights(p) for n, p in paths.items()}
    for n, e in experts.items():
        _check_expert(e, base_cfg, f"experts.{n}.model", paths[n])
    shared = shared_merge(cfg, base, paths)
    for n, e in experts.items():
        shapes = e.shapes()
        if set(shapes) != set(shared) or any(shapes[k] != tuple(shared[k].shape) for k in shared):
            raise UserInputError(
                f"experts.{n}.model: {paths[n]} does not have the base model's tensors and "
                f"shapes; Twin-Merging needs experts fine-tuned from base_model"
            )
    all_adapters = all(e.adapter is not None for e in experts.values())
    base_src = ExpertWeights(base) if all_adapters else None
    tensors, tally = twin_state(shared, experts, cfg.rank, base_src)
    kept = tally.shares()

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
    tied = set(model.get_expanded_tied_weights_keys())  # the head's, when tied
    missing = (
        set(model.state_dict())
        - set(tensors)
        - tied
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
            tied_embeddings=bool(base_cfg.tie_word_embeddings),
            matrices_from_adapter_factors=tally.from_factors,
            matrices_by_full_svd=tally.full_svd,
        )
        (tmp / SUMMARY).write_text(json.dumps(asdict(summary), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
