"""MC-SMoE's compression step (the "C"): Li, Zhang, Yadav, Sung, Cheng, Bansal, Chen, "Merge,
Then Compress: Demystify Efficient SMoE with Hints from Its Routing Policy", ICLR 2024
(arXiv:2310.01334), as its released code does it (github.com/UNITES-Lab/MC-SMoE,
``mcsmoe/pruning/losparse.py`` and ``losparse-downstream.py``, read, not copied; the authors'
code adapts LoSparse, Li et al., ICML 2023, arXiv:2306.11222).

Every matrix W [out, in] of every merged expert (Mixtral's w1/gate, w3/up, w2/down) becomes
W = L R + S: L [out, r] = U_r sqrt(s_r), R [r, in] = sqrt(s_r) V_r^T from W's SVD, S = W - L R
the residual, dense at first. The model is then fine-tuned (``compress_finetune.py``) while S
is pruned row by row (``compress_prune.py``): after every optimizer step each row's sensitivity
decides which rows of all the S matrices survive, the surviving share shrinking on a cubic
schedule to ``1 - sparsity``. What is stored is L, R and the surviving rows of S.

The paper's method section could not be read from here (only its abstract and summaries); the
rank, the pruning scores, the schedule and the distillation loss are the authors' code's. The
choices it leaves to each run are options here (``CompressOptions``); the defaults that are
ours, not the authors', are said in docs/moe.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from evomerge.errors import UserInputError
from evomerge.moe.experts import layer_experts

# Mixtral's expert matrices, in the order the per-expert checkpoint names them (w1, w3, w2),
# named as ``moe.experts.Expert``'s fields
MATRICES = ("gate", "up", "down")
FORMS = ("dense", "factored")  # what ``moe-reduce --compress`` writes as OUT


@dataclass(frozen=True)
class CompressOptions:
    """``--compress rank=R,sparsity=X[,steps=N,lr=F,batch=B,seed=S,form=F]``."""

    rank: int  # r of every L R (the authors' ``low_rank_factor``)
    sparsity: float  # share of all S entries pruned by the end (the authors' 1 - final_threshold)
    steps: int = 300  # fine-tuning steps (ours: the authors train for epochs of their task)
    lr: float = 1e-3  # AdamW peak rate, linear decay (ours: the zoo trained at 3e-3)
    batch: int = 32  # lines a step (the authors: 8 examples of their task)
    seed: int = 0  # the order of the fine-tuning lines
    # what OUT holds: "dense" (a plain Mixtral of the products L R + S, the factors beside it)
    # or "factored" (L, R and S's kept rows, run as such by modeling_mc_smoe.py; docs/moe.md)
    form: str = "dense"


def parse_compress(text: str) -> CompressOptions:
    """``key=value`` pairs, comma separated; every refusal is one line naming the key."""
    kinds = {f.name: f.type for f in fields(CompressOptions)}
    given: dict[str, object] = {}
    for part in (p.strip() for p in text.split(",")):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in kinds:
            raise UserInputError(
                f"--compress {part!r}: give key=value pairs from {', '.join(kinds)} "
                "(e.g. --compress rank=16,sparsity=0.9)"
            )
        cast = {"int": int, "str": str}.get(getattr(kinds[key], "__name__", kinds[key]), float)
        try:
            given[key] = cast(value)
        except ValueError:
            raise UserInputError(
                f"--compress {key}={value}: not a{'n int' if cast is int else ' number'}"
            ) from None
    missing = [k for k in ("rank", "sparsity") if k not in given]
    if missing:
        raise UserInputError(
            f"--compress: give {' and '.join(missing)} (e.g. rank=16,sparsity=0.9)"
        )
    opts = CompressOptions(**given)  # type: ignore[arg-type]
    if opts.rank < 1:
        raise UserInputError(f"--compress rank={opts.rank}: give a rank of at least 1")
    if not 0.0 <= opts.sparsity <= 1.0:
        raise UserInputError(f"--compress sparsity={opts.sparsity}: give a share in [0, 1]")
    if opts.steps < 3:  # the schedule leaves the first step unpruned and prunes at the last
        raise UserInputError(
            f"--compress steps={opts.steps}: give at least 3 (a warmup step, then pruning)"
        )
    if opts.batch < 1:
        raise UserInputError(f"--compress batch={opts.batch}: give at least 1")
    if opts.form not in FORMS:
        raise UserInputError(
            f"--compress form={opts.form}: give form=dense (the default: a plain Mixtral folder) "
            "or form=factored (L, R and S's kept rows, loaded with trust_remote_code=True)"
        )
    if not opts.lr > 0:
        raise UserInputError(f"--compress lr={opts.lr}: give a positive learning rate")
    return opts


def check_rank(opts: CompressOptions, hidden: int, intermediate: int) -> None:
    """A rank of min(out, in) or more stores more than the dense matrix: refused."""
    if opts.rank >= min(hidden, intermediate):
        raise UserInputError(
            f"--compress rank={opts.rank}: the experts' matrices are {intermediate}x{hidden}; "
            f"give a rank below {min(hidden, intermediate)}"
        )


def low_rank_split(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L [out, r], R [r, in] with L R the best rank-r approximation of ``weight`` (SVD, the
    singular values split evenly between the two, as the authors' code does)."""
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()


class FactoredExperts(torch.nn.Module):
    """The factors of one MoE block's experts, one (L, R, S) per matrix kind, stacked over
    experts: ``left[m]`` [E, out, r], ``right[m]`` [E, r, in], ``sparse[m]`` [E, out, in]."""

    def __init__(self, experts: dict[str, torch.Tensor], rank: int):
        super().__init__()
        self.left = torch.nn.ParameterDict()
        self.right = torch.nn.ParameterDict()
        self.sparse = torch.nn.ParameterDict()
        for m in MATRICES:
            pairs = [low_rank_split(w, rank) for w in experts[m]]
            left = torch.stack([lf for lf, _ in pairs])
            right = torch.stack([rt for _, rt in pairs])
            self.left[m] = torch.nn.Parameter(left)
            self.right[m] = torch.nn.Parameter(right)
            self.sparse[m] = torch.nn.Parameter(experts[m].float() - left @ right)

    def weight(self, m: str) -> torch.Tensor:
        """[E, out, in]: L R + S, differentiable in all three."""
        return self.left[m] @ self.right[m] + self.sparse[m]


def block_matrices(block) -> dict[str, torch.Tensor]:
    """``{gate, up, down}`` of one Mixtral MoE block, each [E, out, in], detached float32."""
    experts = layer_experts(block)
    return {m: torch.stack([getattr(ex, m) for ex in experts]) for m in MATRICES}


def factorize_block(block, rank: int) -> FactoredExperts:
    """Replace the block's fused expert parameters by L R + S, composed before every forward.

    transformers' ``MixtralExperts`` reads ``gate_up_proj`` and ``down_proj``; they stop being
    parameters and become tensors rebuilt from the factors by a forward pre-hook, so gradients
    reach L, R and S and the rest of the model runs unchanged."""
    experts = block.experts
    factors = FactoredExperts(block_matrices(block), rank)
    del experts._parameters["gate_up_proj"], experts._parameters["down_proj"]
    experts.factors = factors

    def compose(module, _args):
        module.gate_up_proj = torch.cat([factors.weight("gate"), factors.weight("up")], dim=1)
        module.down_proj = factors.weight("down")

    experts._compose_handle = experts.register_forward_pre_hook(compose)
    return factors


def unfactorize_block(block) -> None:
    """Back to a plain Mixtral block whose expert weights are the dense products L R + S."""
    experts = block.experts
    factors: FactoredExperts = experts.factors
    experts._compose_handle.remove()
    with torch.no_grad():
        gate_up = torch.cat([factors.weight("gate"), factors.weight("up")], dim=1)
        down = factors.weight("down")
    for name in ("gate_up_proj", "down_proj"):
        experts.__dict__.pop(name, None)
    experts.gate_up_proj = torch.nn.Parameter(gate_up.contiguous())
    experts.down_proj = torch.nn.Parameter(down.contiguous())
    del experts.factors, experts._compose_handle
