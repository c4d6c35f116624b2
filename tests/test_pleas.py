"""PLeaS (evomerge/model_merges/pleas.py): matching, least squares, and the digits zoo's pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.errors import UserInputError
from evomerge.model_merges import pleas
from evomerge.model_merges.digits import layers_of, merge_digits
from evomerge.zoo.build import build
from evomerge.zoo.digits import (
    digits_correct,
    digits_data,
    load_digits_model,
    save_digits_model,
)


def _chain(widths: list[int], seed: int) -> list[pleas.Layer]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(o, i, generator=g, dtype=torch.float64), torch.randn(o, generator=g))
        for i, o in zip(widths[:-1], widths[1:])
    ]


def _permuted(layers: list[pleas.Layer], perms: list[torch.Tensor]) -> list[pleas.Layer]:
    """B's hidden unit perms[l][i] is A's unit i: the same function, units shuffled."""
    out = []
    for lay, (w, b) in enumerate(layers):
        rows = perms[lay] if lay < len(perms) else torch.arange(w.shape[0])
        cols = perms[lay - 1] if lay > 0 else torch.arange(w.shape[1])
        wb, bb = torch.empty_like(w), torch.empty_like(b)
        wb[rows.unsqueeze(1), cols] = w  # B[rows[i], cols[j]] = A[i, j]
        bb[rows] = b
        out.append((wb, bb))
    return out


def _run(layers: list[pleas.Layer], x: torch.Tensor) -> torch.Tensor:
    return pleas.features(layers, x)[-1][1]


@pytest.fixture(scope="module")
def twins():
    a = _chain([6, 12, 10, 3], seed=0)
    g = torch.Generator().manual_seed(1)
    perms = [torch.randperm(12, generator=g), torch.randperm(10, generator=g)]
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    return a, _permuted(a, perms), perms, x


def test_matching_recovers_the_permutation(twins) -> None:
    a, b, perms, x = twins
    feats_a, feats_b = pleas.features(a, x), pleas.features(b, x)
    for lay, perm in enumerate(perms):
        found, _ = pleas.match_units(feats_a[lay][1], feats_b[lay][1])
        assert torch.equal(found, perm)


@pytest.mark.parametrize("method", ["permute", "pleas"])
@pytest.mark.parametrize("size", [1.0, 1.5, 2.0])
def test_merging_a_permuted_copy_gives_the_model_back(twins, method: str, size: float) -> None:
    a, b, _, x = twins
    merged, units = pleas.merge(a, b, x, size=size, method=method)
    assert [u.width for u in units[1:-1]] == [round(12 * size), round(10 * size)]
    fresh = torch.randn(100, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(_run(merged, fresh), _run(a, fresh))
    one = sum(w.numel() + b.numel() for w, b in a)
    expected = {1.0: one, 2.0: 2 * one - 3}  # size 2: two models side by side, one output bias
    assert pleas.parameter_count(units) == expected.get(size, pleas.parameter_count(units))
    if size == 1.0:  # one model's width: A's own weights (B's units were matched to A's)
        for (wm, bm), (wa, ba) in zip(merged, a):
            torch.testing.assert_close(wm, wa)
            torch.testing.assert_close(bm, ba.double())


def test_plain_average_of_a_permuted_copy_is_not_the_model(twins) -> None:
    """The control: without matching, averaging the two orders of units breaks the function."""
    a, b, _, x = twins
    merged, _ = pleas.merge(a, b, x, method="average")
    assert (_run(merged, x) - _run(a, x)).abs().max() > 1.0


def test_least_squares_step_equals_numpy_lstsq() -> None:
    g = torch.Generator().manual_seed(3)
    prev = pleas.Units(
        torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor([1]), torch.tensor([2])
    )
    cur = pleas.Units(torch.tensor([1]), torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    x = torch.randn(40, prev.width, generator=g, dtype=torch.float64)
    target = torch.randn(40, cur.width, generator=g, dtype=torch.float64)
    mask = pleas.allowed_inputs(prev, cur)
    assert mask.tolist() == [
        [True, True, True, True],
        [True, True, True, False],
        [True, True, False, True],
    ]
    w, b = pleas.solve_layer(x, target, mask)
    xn, tn = x.numpy(), target.numpy()
    for row in range(cur.width):
        cols = mask[row].numpy()
        design = np.hstack([xn[:, cols], np.ones((len(xn), 1))])
        sol = np.linalg.lstsq(design, tn[:, row], rcond=None)[0]
        np.testing.assert_allclose(w[row, cols].numpy(), sol[:-1], atol=1e-10)
        np.testing.assert_allclose(b[row].item(), sol[-1], atol=1e-10)
        assert not w[row, ~mask[row]].any()  # A's kept units read none of B's


def test_user_errors_name_the_field(twins) -> None:
    a, b, _, x = twins
    with pytest.raises(UserInputError, match=r"size: 2.5 is outside \[1, 2\]"):
        pleas.merge(a, b, x, size=2.5)
    with pytest.raises(UserInputError, match="method: 'zip' is unknown"):
        pleas.merge(a, b, x, method="zip")
    with pytest.raises(UserInputError, match="layer shapes differ"):
        pleas.merge(a, _chain([6, 11, 10, 3], seed=2), x)


@pytest.fixture(scope="module")
def digits_zoo():
    return build("digits", quick=True, progress=False)  # cached by config hash


def _accuracy(model) -> float:
    correct = digits_correct(model)
    return sum(correct) / len(correct)


def test_pleas_merges_different_inits_where_averaging_fails(digits_zoo, tmp_path) -> None:
    a, b = (load_digits_model(digits_zoo / name) for name in ("init_0", "init_1"))
    assert a.depth == 2 and layers_of(a)[1][0].shape == (128, 128)
    sources = min(_accuracy(a), _accuracy(b))
    average = _accuracy(merge_digits(a, b, method="average"))
    merged = _accuracy(merge_digits(a, b, size=1.0))
    assert merged > average + 0.1  # measured: 0.95 against 0.73
    assert merged > sources - 0.02
    wider = merge_digits(a, b, size=1.5)  # a digits model folder like any other, 192 units wide
    save_digits_model(wider, tmp_path / "merged")
    x = digits_data("test")[0]
    torch.testing.assert_close(load_digits_model(tmp_path / "merged")(x), wider(x))
    assert [m.out_features for m in wider.hidden_layers()] == [192, 192]


def test_least_squares_beats_permutation_alone_on_different_data(digits_zoo) -> None:
    """M2N2's pair (different inits, digits 0-4 and 5-9): the paper's setting of models trained
    on different data, where the least-squares step adds most over matching alone."""
    a, b = (load_digits_model(digits_zoo / name) for name in ("half_0to4", "half_5to9"))
    permuted = _accuracy(merge_digits(a, b, size=1.0, method="permute"))
    merged = _accuracy(merge_digits(a, b, size=1.0))
    assert merged > permuted + 0.05  # measured: 0.61 against 0.49
    assert merged > max(_accuracy(a), _accuracy(b))
