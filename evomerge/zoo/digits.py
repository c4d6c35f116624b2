"""The ``digits`` zoo: small MLP classifiers on scikit-learn's bundled 8x8 digits.

The model is the 64-256-10 MLP of M2N2 ("Competition and Attraction Improve Model Fusion",
Abrantes et al., 2025). Models are saved as HF-style folders (``config.json`` + ``model.safetensors``)
so the merge engine reads them like any other checkpoint; they are not ``transformers``
architectures, so :func:`load_digits_model` loads them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from evomerge.errors import UserInputError

ARCHITECTURE = "EvomergeDigitsMLP"
MODEL_TYPE = "evomerge-digits-mlp"
N_TRAIN = 1437  # M2N2's split: 1,437 train / 360 test
SPLIT_SEED = 0


class DigitsMLP(nn.Module):
    """64 -> hidden (ReLU) -> 10. Tensor names: ``hidden.weight/bias``, ``head.weight/bias``.

    ``depth`` > 1 stacks more hidden layers of the same width (``hidden_2``, ``hidden_3``, ...):
    PLeaS's different-init pair is two hidden layers deep, where weight averaging fails."""

    def __init__(
        self, in_features: int = 64, hidden: int = 256, classes: int = 10, depth: int = 1
    ) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden)
        for i in range(2, depth + 1):
            setattr(self, f"hidden_{i}", nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, classes)
        self.depth = depth

    def hidden_layers(self) -> list[nn.Linear]:
        return [self.hidden] + [getattr(self, f"hidden_{i}") for i in range(2, self.depth + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden_layers():
            x = torch.relu(layer(x))
        return self.head(x)


def _images(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, 8, 8)


# Input transforms, one per expert: each makes a distinct task on the same 10 classes.
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "rot90": lambda x: torch.rot90(_images(x), 1, (1, 2)).reshape(-1, 64),
    "flip": lambda x: torch.flip(_images(x), (2,)).reshape(-1, 64),
    "invert": lambda x: 1.0 - x,
    "rot180": lambda x: torch.rot90(_images(x), 2, (1, 2)).reshape(-1, 64),
    "transpose": lambda x: _images(x).transpose(1, 2).reshape(-1, 64),
    "roll": lambda x: torch.roll(_images(x), shifts=(2, 2), dims=(1, 2)).reshape(-1, 64),
}


@lru_cache(maxsize=1)
def _split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    tr, te = order[:N_TRAIN], order[N_TRAIN:]
    return x[tr], y[tr], x[te], y[te]


def digits_data(split: str, transform: str = "identity") -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` of the fixed split (``"train"``: 1,437, ``"test"``: 360), X in [0, 1], 64 wide."""
    if split not in ("train", "test"):
        raise UserInputError(f"digits split {split!r} is unknown; use 'train' or 'test'")
    if transform not in TRANSFORMS:
        raise UserInputError(
            f"digits transform {transform!r} is unknown; valid: {', '.join(TRANSFORMS)}"
        )
    xtr, ytr, xte, yte = _split()
    x, y = (xtr, ytr) if split == "train" else (xte, yte)
    return TRANSFORMS[transform](x).contiguous(), y.clone()


def new_digits_model(seed: int, hidden: int = 256, depth: int = 1) -> DigitsMLP:
    torch.manual_seed(seed)
    return DigitsMLP(hidden=hidden, depth=depth)


def train_digits(
    model: DigitsMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch: int = 64,
) -> None:
    """Adam on shuffled minibatches; the shuffle order comes from ``seed`` alone."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()


def save_digits_model(model: DigitsMLP, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "in_features": model.hidden.in_features,
        "hidden_size": model.hidden.out_features,
        "num_classes": model.head.out_features,
        **({"hidden_layers": model.depth} if model.depth > 1 else {}),
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def load_digits_model(path: str | Path) -> DigitsMLP:
    """Load a folder written by :func:`save_digits_model` (or a merge of such folders)."""
    from safetensors.torch import load_file

    p = Path(path)
    cfg_path, weights = p / "config.json", p / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise UserInputError(
            f"{p}: not a digits model folder (needs config.json and model.safetensors)"
        )
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != MODEL_TYPE:
        raise UserInputError(
            f"{cfg_path}: model_type is {cfg.get('model_type')!r}, expected {MODEL_TYPE!r}"
        )
    model = DigitsMLP(
        cfg["in_features"], cfg["hidden_size"], cfg["num_classes"], cfg.get("hidden_layers", 1)
    )
    state = load_file(str(weights))
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise UserInputError(f"{weights}: missing tensors {sorted(missing)}")
    model.load_state_dict({k: state[k].float() for k in model.state_dict()})
    return model.eval()


@torch.no_grad()
def digits_correct(model: nn.Module, transform: str = "identity") -> list[float]:
    """Per-example correctness (1.0/0.0) on the test split under ``transform``."""
    x, y = digits_data("test", transform)
    return (model(x).argmax(-1) == y).float().tolist()
