"""M2N2 pieces against hand-computed values (Abrantes et al. 2025)."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.drivers.m2n2 import M2N2, choose_parents, crossover, shared_fitness
from evomerge.fitness.result import EvalResult, TaskScore


def test_shared_fitness_by_hand():
    s = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], float)
    f = shared_fitness(s, alpha=1.0)
    # example 0 is solved by two models: each gets 1/2; example 1 by one: 1; example 2 by none
    np.testing.assert_allclose(f, [[0.5, 1, 0], [0.5, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(shared_fitness(s, alpha=0.0), s)  # GA: raw scores


def test_attraction_picks_the_complement():
    s = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], float)
    f = shared_fitness(s, 1.0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        p1, p2 = choose_parents(rng, f, use_attraction=True)
        assert p1 != 3
        # g_k = sum_j max(0, f_kj - f_p1j): only the model solving what p1 does not attracts
        if p1 in (0, 1):
            assert p2 == 2
        else:
            assert p2 in (0, 1)


def test_crossover_split_and_slerp():
    a, b = np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 0, 0])
    # split 2, w = 0: genes before the split come from a (t=0), after from b (t=1)
    np.testing.assert_allclose(crossover(a, b, 2, 0.0), [1, 0, 0, 0], atol=1e-12)
    x = crossover(a, b, 4, 0.5)  # no split: plain slerp halfway on the quarter circle
    np.testing.assert_allclose(x, [np.sqrt(0.5), np.sqrt(0.5), 0, 0], atol=1e-12)
    c = np.array([2.0, 0, 0, 0])  # colinear with a: lerp
    np.testing.assert_allclose(crossover(a, c, 4, 0.25), [1.25, 0, 0, 0])


def _detail(row):
    return EvalResult(tasks={"t": TaskScore.from_examples(row)})


def test_archive_keeps_complementary_models_over_redundant_better_ones():
    d = M2N2(2, np.zeros(2), np.ones(2), np.zeros(2), seed=0, archive_size=2)
    cands = d.ask(3)
    # shared: A, B get 3 x 1/2 = 1.5 each; C, alone on its two examples, gets 2
    rows = [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]]
    d.tell(cands, [np.mean(r) for r in rows], [_detail(r) for r in rows])
    genomes, fit = d.archive
    assert sorted(fit.tolist()) == [0.4, 0.6]  # a GA (alpha 0) would keep the two 0.6s
    g = M2N2(2, np.zeros(2), np.ones(2), np.zeros(2), seed=0, archive_size=2, alpha=0.0)
    cands = g.ask(3)
    g.tell(cands, [np.mean(r) for r in rows], [_detail(r) for r in rows])
    assert sorted(g.archive[1].tolist()) == [0.6, 0.6]


def test_failed_child_never_enters_archive():
    d = M2N2(2, np.zeros(2), np.ones(2), np.zeros(2), seed=0, archive_size=3)
    cands = d.ask(3)
    d.tell(cands, [0.1, float("nan"), 0.3])
    assert len(d.archive[0]) == 2


def test_mismatched_rows_rejected():
    from evomerge.errors import UserInputError

    d = M2N2(2, np.zeros(2), np.ones(2), np.zeros(2), seed=0)
    cands = d.ask(2)
    with pytest.raises(UserInputError, match="same examples"):
        d.tell(cands, [0.5, 0.5], [_detail([1, 0]), _detail([1, 0, 1])])


def test_without_attraction_parents_are_independent_draws():
    """No attraction (and GA, alpha 0): the reference draws both parents with replacement in
    proportion to fitness, so a dominant member often mates with itself."""
    f = np.array([[1.0, 1.0], [0.1, 0.0], [0.0, 0.0]])
    rng = np.random.default_rng(0)
    pairs = [choose_parents(rng, f, use_attraction=False) for _ in range(400)]
    assert all(2 not in p for p in pairs)  # zero fitness: never a parent
    same = sum(p1 == p2 for p1, p2 in pairs) / len(pairs)
    assert 0.85 < same < 0.97  # P(both = member 0) = (2/2.1)^2 ≈ 0.91
