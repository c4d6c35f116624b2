"""evomerge/fitness/irt.py (tinyBenchmarks' anchors, 2PL IRT, p-IRT, gp-IRT) on seeded synthetic
data, and benchmarks/few_item_estimators.py's replay."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from evomerge.fitness.irt import (
    LAMBDA_GRID,
    anchor_estimate,
    fit_ability,
    fit_ability_mp,
    fit_irt,
    gp_irt_lambda,
    irt_embedding,
    irt_estimates,
    select_anchors,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import few_item_estimators as fe  # noqa: E402


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.fixture(scope="module")
def synthetic():
    """200 models x 100 items drawn from a known unidimensional 2PL model, and its fit."""
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(200)
    alpha = rng.uniform(0.5, 2.0, 100)
    beta = rng.standard_normal(100)
    p = _sigmoid(np.outer(theta, alpha) - beta)
    y = (rng.random(p.shape) < p).astype(float)
    return theta, alpha, beta, p, y, fit_irt(y, dims=1, seed=0)


def test_irt_fit_recovers_the_simulated_parameters(synthetic):
    theta, alpha, beta, p, _, model = synthetic
    # alpha . theta is identified up to a common sign; beta is not
    sign = np.sign(np.corrcoef(model.theta[:, 0], theta)[0, 1])
    assert np.corrcoef(model.beta, beta)[0, 1] > 0.95
    assert np.corrcoef(sign * model.theta[:, 0], theta)[0, 1] > 0.95
    assert np.corrcoef(sign * model.alpha[:, 0], alpha)[0, 1] > 0.8
    fitted = _sigmoid(model.theta @ model.alpha.T - model.beta)
    assert np.mean(np.abs(fitted - p)) < 0.06


def test_ability_fit_on_anchors_predicts_a_new_models_accuracy(synthetic):
    theta, alpha, beta, _, _, model = synthetic
    sign = np.sign(np.corrcoef(model.theta[:, 0], theta)[0, 1])
    rng = np.random.default_rng(1)
    w = np.full(100, 0.01)
    anchors = select_anchors(irt_embedding(model), 30, w, seed=0)
    for true_theta in (-1.0, 0.0, 1.0):
        p_new = _sigmoid(alpha * true_theta - beta)
        y_new = (rng.random(100) < p_new).astype(float)
        # the ability from every item, then from the 30 anchors only
        assert abs(sign * fit_ability(model, np.arange(100), y_new)[0] - true_theta) < 0.4
        t_anchors = fit_ability(model, anchors.items, y_new[anchors.items])[0]
        assert abs(sign * t_anchors - true_theta) < 0.5
        est = irt_estimates(model, anchors, y_new[anchors.items], w, (0.5,))
        assert abs(est["pirt"] - y_new.mean()) < 0.06
        assert est["gpirt@0.5"] == pytest.approx(
            0.5 * anchor_estimate(anchors, y_new[anchors.items]) + 0.5 * est["pirt"]
        )


def test_mp_irt_ability_is_the_free_fit_when_the_endpoints_span_the_space(synthetic):
    """MERGE3's mp-IRT fits lambda in theta = lambda @ endpoints. With one dimension any
    endpoint with theta != 0 spans it, and the likelihood is concave, so it lands on the free
    maximum-likelihood ability; with two dimensions and one endpoint it stays on that
    endpoint's line and so differs from the free fit."""
    theta, alpha, beta, _, y, model = synthetic
    items = np.arange(0, 100, 3)
    for row in y[:5]:
        free = fit_ability(model, items, row[items])
        mp = fit_ability_mp(model, items, row[items], model.theta[[0, 7]])
        np.testing.assert_allclose(mp, free, atol=1e-3)
    two = fit_irt(y[:60], dims=2, seed=0)
    end = two.theta[[3]]
    mp2 = fit_ability_mp(two, items, y[70, items], end)
    free2 = fit_ability(two, items, y[70, items])
    assert abs(mp2[0] * end[0, 1] - mp2[1] * end[0, 0]) < 1e-9  # on the endpoint's line
    assert np.linalg.norm(mp2 - free2) > 1e-3


def test_anchor_selection_is_deterministic_and_weighs_clusters_by_their_items():
    rng = np.random.default_rng(2)
    sizes, centers = (10, 20, 30), (0.0, 10.0, 20.0)
    x = np.concatenate([c + 0.1 * rng.standard_normal((n, 2)) for n, c in zip(sizes, centers)])
    a1 = select_anchors(x, 3, seed=5)
    a2 = select_anchors(x, 3, seed=5)
    assert np.array_equal(a1.items, a2.items) and np.array_equal(a1.weights, a2.weights)
    # one anchor per blob, each weighing its blob's share of the 60 items
    assert [int(np.searchsorted(np.cumsum(sizes), i, side="right")) for i in a1.items] == [0, 1, 2]
    np.testing.assert_allclose(a1.weights, [10 / 60, 20 / 60, 30 / 60])
    # item weights move the anchors' weights with them
    w = np.concatenate([np.full(10, 0.5 / 10), np.full(50, 0.5 / 50)])
    np.testing.assert_allclose(select_anchors(x, 3, w, seed=5).weights, [0.5, 0.2, 0.3])
    with pytest.raises(ValueError, match="k = 61"):
        select_anchors(x, 61)


def test_gp_irt_lambda_is_chosen_from_the_grid(synthetic):
    *_, y, _ = synthetic
    lam = gp_irt_lambda(y[:40], np.full(100, 0.01), 10, seed=0)
    assert lam in LAMBDA_GRID
    assert gp_irt_lambda(y[:3], np.full(100, 0.01), 10) == 0.5  # too few models to validate


def test_replay_with_k_equal_to_the_pool_gives_the_full_score_exactly():
    """k = N: every subset estimator (and p-IRT / gp-IRT, which then see every item) is the
    weighted mean of all items, i.e. the full fitness."""
    rng = np.random.default_rng(3)
    n = 12
    entry = np.repeat([0, 1], [4, 8])
    w = np.where(entry == 0, 0.3 / 4, 0.7 / 8)  # two task entries with unequal shares
    gens = np.repeat([-1, 0, 1], [5, 4, 4])
    run = fe.Run(y=rng.random((len(gens), n)), w=w, generation=gens, entry=entry)
    records = fe.replay(run, n, seed=0, draws=3, dims=1, first_gen=1)
    assert len(records) == 4
    for r in records:
        for name in ("random", "random-strat"):
            np.testing.assert_allclose(r["est"][name], [r["full"]] * 3, rtol=0, atol=1e-12)
        for name in (
            "anchor-corr",
            "anchor-irt",
            "pirt",
            "gpirt-val",
            "gpirt-0.5",
            "mp-irt",
            "gmp-irt-0.5",
        ):
            assert r["est"][name] == pytest.approx(r["full"], abs=1e-12), name
    m = fe.run_metrics(records, "random")
    assert m["mae"] == pytest.approx(0.0, abs=1e-12)


def test_replay_is_deterministic():
    rng = np.random.default_rng(4)
    gens = np.repeat([-1, 0, 1, 2], [4, 6, 6, 6])
    y = (rng.random((len(gens), 30)) < 0.5).astype(float)
    run = fe.Run(y=y, w=np.full(30, 1 / 30), generation=gens, entry=np.repeat([0, 1, 2], 10))
    first = fe.replay(run, 6, seed=1, draws=2, dims=1, first_gen=1)
    assert first == fe.replay(run, 6, seed=1, draws=2, dims=1, first_gen=1)
    assert [r["gen"] for r in first] == [1] * 6 + [2] * 6
