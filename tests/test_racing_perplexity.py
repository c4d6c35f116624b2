"""Racing on a perplexity fitness, whose score is a ratio of sums (log-likelihood over tokens),
not a mean of its windows: the linearization on a case computed by hand (the delta method for a
ratio estimator), and a racing search on real zoo experts (lm-skills) against the same search
scoring every window: the same candidates, the fully scored ones byte for byte, the same winner,
fewer item evaluations. The exact resume after a SIGKILL, with a perplexity task in the pool, is
test_racing.py's kill test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evomerge.fitness.items import ItemPool
from evomerge.fitness.perplexity import window_score
from evomerge.racing import paired_upper
from evomerge.search_cli import search
from evomerge.store import RunStore
from tests.test_racing import RANDOM, _experiment, _racing_meta, _snapshot

pytestmark = pytest.mark.timeout(600)


def _pool(n_ppl: int, n_zoo: int = 0, kind: str = "neg_log_ppl") -> ItemPool:
    """A pool of ``n_ppl`` windows (share 1/2 when a zoo entry of ``n_zoo`` items is there)."""
    share = 0.5 if n_zoo else 1.0
    entries = [("ppl", n_ppl, share)] + ([("zoo", n_zoo, 0.5)] if n_zoo else [])
    order = [(0, p) for p in range(n_ppl)] + [(1, p) for p in range(n_zoo)]
    perm = np.random.default_rng(0).permutation(len(order))
    return ItemPool(tuple(entries), tuple(order[i] for i in perm), ((0, kind),))


def test_linearized_windows_give_the_ratio_estimate_and_the_delta_method_bound():
    rng = np.random.default_rng(1)
    pool = _pool(30)
    tokens = rng.integers(5, 40, size=30).astype(float)  # unequal windows: a ratio, not a mean
    a = rng.normal(-2.0, 0.4, size=30)  # each window's mean log-likelihood
    b = a - rng.normal(0.3, 0.2, size=30)
    m = 12
    ua, ub = pool.linearize(a[:m], tokens[:m]), pool.linearize(b[:m], tokens[:m])
    ll_a, ll_b, n = a[:m] * tokens[:m], b[:m] * tokens[:m], tokens[:m]
    # the mean is the ratio estimate over the m windows, as the task scores them
    assert ua.mean() == pytest.approx(ll_a.sum() / n.sum())
    assert ua.mean() == pytest.approx(window_score(a[:m], n, "neg_log_ppl"))
    # the paired bound is Cochran's large-sample bound for the ratio estimator of the
    # difference: D + z * sqrt(sum((y - D x)^2) / (m - 1)) / (mean(x) * sqrt(m)), y = ll_a - ll_b
    y = ll_a - ll_b
    d = y.sum() / n.sum()
    se = math.sqrt(((y - d * n) ** 2).sum() / (m - 1)) / (n.mean() * math.sqrt(m))
    assert paired_upper(ua, ub, 1.645) == pytest.approx(d + 1.645 * se)
    assert paired_upper(ub, ua, 1.645) < 0  # b is surely worse here
    # every window of equal length: the plain paired bound on the window values
    flat = np.full(m, 16.0)
    assert np.allclose(pool.linearize(a[:m], flat), a[:m])
    # 1/ppl: the estimate is exp of the ratio, the spread scaled by its derivative
    inv = _pool(30, kind="inv_ppl")
    ui = inv.linearize(a[:m], tokens[:m])
    assert ui.mean() == pytest.approx(math.exp(ll_a.sum() / n.sum()))
    assert ui.std() == pytest.approx(math.exp(ll_a.sum() / n.sum()) * ua.std())


def test_a_mixed_pool_estimates_each_part_and_needs_two_windows_to_bound():
    rng = np.random.default_rng(2)
    pool = _pool(10, n_zoo=20)
    ent = np.array([e for e, _ in pool.order])
    y = np.where(ent == 0, rng.normal(-2.0, 0.3, 30), 30 * 0.5 / 20 * (rng.random(30) < 0.6))
    w = np.where(ent == 0, rng.integers(8, 16, 30), 1).astype(float)
    m = 15
    u = pool.linearize(y[:m], w[:m])
    at = ent[:m] == 0
    ratio = (y[:m][at] * w[:m][at]).sum() / w[:m][at].sum()
    zoo_part = y[:m][~at].sum() / m  # the zoo values' mean over the m items, as without ratios
    assert u.mean() == pytest.approx(0.5 * ratio + zoo_part)
    assert pool.estimate(y[:m], w[:m]) == pytest.approx(u.mean())
    # no bound before two windows are among the items
    first_two = [i for i, (e, _) in enumerate(pool.order) if e == 0][:2]
    assert not pool.bounded(first_two[1]) and pool.bounded(first_two[1] + 1)
    # every item: the joined result scores exactly as the task does (window_score)
    assert pool.estimate(y, w) == pytest.approx(
        0.5 * (y[ent == 0] * w[ent == 0]).sum() / w[ent == 0].sum() + y[ent == 1].sum() / 30
    )


PPL = "max_length: 16, max_windows: 40"


def test_perplexity_search_races_to_the_full_winner_with_fewer_item_evaluations(tmp_path, capsys):
    # the lm-skills experts on lm-skills' text: each fits a quarter of its lines, so merges differ
    kw = {"driver": RANDOM, "budget": "{max_evals: 18}", "ppl": PPL, "zoo": False}
    plain = _experiment(tmp_path, racing=None, **kw)
    raced = _experiment(tmp_path, racing="{first_slice: 10, slice: 10}", name="r.yaml", **kw)
    assert search(plain, tmp_path / "plain") == 0
    assert search(raced, tmp_path / "race") == 0
    capsys.readouterr()
    p, r = _snapshot(tmp_path / "plain"), _snapshot(tmp_path / "race")
    meta = _racing_meta(r[0])
    assert all(m and m["of"] == 40 for m in meta)
    short = [i for i, m in enumerate(meta) if m["items"] < m["of"]]
    assert short, "racing stopped no candidate early"
    with RunStore.open(tmp_path / "race", readonly=True) as st:
        assert st.item_evals() == sum(m["items"] for m in meta) < 18 * 40
    for i, (pt, rt) in enumerate(zip(p[0], r[0], strict=True)):
        assert pt[2] == rt[2]  # random search asks the same candidates either way
        if i not in short:  # fully scored: the plain result, to the last bit
            assert pt[7] == rt[7] and pt[9] == rt[9]
        else:  # stopped: surely below the winner on its full score
            assert pt[7] < p[1][0][3]
    assert '"weights"' in r[0][0][9]  # each window's tokens are stored with its value
    assert not {row[2] for row in r[1]} & {r[0][i][0] for i in short}
    assert r[1][0][1] == p[1][0][1]  # the same winner
