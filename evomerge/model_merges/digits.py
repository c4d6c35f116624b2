"""PLeaS and its baselines on the digits zoo's MLPs (64 -> hidden -> 10, ReLU).

A merged model of size s has a hidden layer s times as wide as its sources'; it is an ordinary
digits model folder (``hidden_size`` in its config), read by ``load_digits_model`` and scored by
the zoo's ``digits`` evaluator like any other.
"""

from __future__ import annotations

import torch

from evomerge.errors import UserInputError
from evomerge.model_merges import pleas
from evomerge.zoo.digits import DigitsMLP, digits_data


def layers_of(model: DigitsMLP) -> list[pleas.Layer]:
    return [(m.weight.detach(), m.bias.detach()) for m in [*model.hidden_layers(), model.head]]


def model_of(layers: list[pleas.Layer]) -> DigitsMLP:
    w1, w_out = layers[0][0], layers[-1][0]
    model = DigitsMLP(w1.shape[1], w1.shape[0], w_out.shape[0], depth=len(layers) - 1)
    with torch.no_grad():
        for lin, (w, b) in zip([*model.hidden_layers(), model.head], layers):
            lin.weight.copy_(w.float())
            lin.bias.copy_(b.float())
    return model.eval()


def activation_inputs(data: str = "train") -> torch.Tensor:
    """The inputs both models read for matching and least squares: the digits training images
    (``train``: the task's own data), or a public proxy with no task data in it (``proxy:T``:
    the training images under transform T, e.g. ``proxy:rot90``; the paper's PLeaS-free)."""
    transform = data.removeprefix("proxy:") if data.startswith("proxy:") else "identity"
    if data != "train" and not data.startswith("proxy:"):
        raise UserInputError(f"data: {data!r} is unknown; use 'train' or 'proxy:<transform>'")
    return digits_data("train", transform)[0]


def merge_digits(
    a: DigitsMLP, b: DigitsMLP, *, size: float = 1.0, method: str = "pleas", data: str = "train"
) -> DigitsMLP:
    merged, _ = pleas.merge(
        layers_of(a), layers_of(b), activation_inputs(data), size=size, method=method
    )
    return model_of(merged)
