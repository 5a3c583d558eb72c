"""White-box interaction games: shapes, probability scale, interactions, exact values."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest
from eac.kernels.games import CLOSED_FORM_GAMES, GAME_NAMES, make_closed_form_game, make_game
from eac.kernels.shapley import all_coalitions


def brute_shapley(game, n):
    """Shapley values by the permutation-free subset formula, written plainly (N×T)."""
    table = game(all_coalitions(n))
    index = {tuple(row): k for k, row in enumerate(all_coalitions(n).astype(int).tolist())}
    phi = np.zeros((n, table.shape[1]))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            w = factorial(size) * factorial(n - size - 1) / factorial(n)
            for s in itertools.combinations(others, size):
                b = [0] * n
                for j in s:
                    b[j] = 1
                without = index[tuple(b)]
                b[i] = 1
                phi[i] += w * (table[index[tuple(b)]] - table[without])
    return phi


@pytest.mark.parametrize("name", GAME_NAMES)
def test_exact_values_match_brute_force_and_live_on_probability_scale(name):
    n = 7
    game = make_game(name, n, seed=3)
    exact = game.exact()
    np.testing.assert_allclose(exact, brute_shapley(game, n), atol=1e-12)
    table = game(all_coalitions(n))
    assert table.min() >= 0.0 and table.max() <= 1.0
    # efficiency, and the class is absent on the empty coalition and present on the full one
    assert exact.sum() == pytest.approx(table[-1, 0] - table[0, 0], abs=1e-12)
    assert table[0, 0] < 0.1 < 0.6 < table[-1, 0]


@pytest.mark.parametrize("name", GAME_NAMES)
def test_games_are_not_additive(name):
    """Some pair of concepts interacts: v(S∪ij) − v(S∪i) − v(S∪j) + v(S) is far from 0."""
    n = 8
    game = make_game(name, n, seed=1)
    coal = all_coalitions(n)
    table = game(coal)[:, 0]
    worst = 0.0
    for i, j in itertools.combinations(range(n), 2):
        base = np.nonzero(~coal[:, i] & ~coal[:, j])[0]
        both, only_i, only_j = base | (1 << i) | (1 << j), base | (1 << i), base | (1 << j)
        inter = table[both] - table[only_i] - table[only_j] + table[base]
        worst = max(worst, float(np.abs(inter).max()))
    assert worst > 0.05


def test_features_and_head_reproduce_the_values_and_several_classes():
    game = make_game("two_objects", 10, seed=0, classes=(0, 1))
    coal = np.random.default_rng(0).random((50, 10)) < 0.5
    probs, feats = game.with_features(coal)
    weight, bias, classes = game.head
    logits = feats @ weight.T + bias
    expect = np.exp(logits - logits.max(1, keepdims=True))
    expect = expect[:, classes] / expect.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expect, atol=1e-12)
    np.testing.assert_allclose(game(coal), probs, atol=1e-12)
    assert game.exact().shape == (10, 2)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown game"):
        make_game("nope", 10)
    with pytest.raises(ValueError, match="n ≤"):
        make_game("texture", 40)
    with pytest.raises(ValueError, match="classes"):
        make_game("texture", 10, classes=(5,))
    with pytest.raises(ValueError, match="M×10"):
        make_game("texture", 10)(np.zeros((3, 9), bool))


# --------------------------------------------------------------------------- closed-form games


@pytest.mark.parametrize("name", CLOSED_FORM_GAMES)
def test_closed_form_values_match_brute_force(name):
    n = 7
    game = make_closed_form_game(name, n, seed=2)
    np.testing.assert_allclose(game.exact(), brute_shapley(game, n), atol=1e-12)
    table = game(all_coalitions(n))
    assert table.min() >= 0.0 and table.max() <= 1.0


@pytest.mark.parametrize("name", CLOSED_FORM_GAMES)
def test_closed_form_games_at_n_32_are_efficient_interacting_and_reproducible(name):
    n = 32
    game = make_closed_form_game(name, n, seed=5)
    ends = game(np.array([np.zeros(n, bool), np.ones(n, bool)]))[:, 0]
    assert game.exact().sum() == pytest.approx(ends[1] - ends[0], abs=1e-12)
    assert ends[0] < 0.1 < 0.8 < ends[1]
    # not additive: the Shapley values are not the marginal contributions to the empty coalition
    singles = game(np.eye(n, dtype=bool))[:, 0] - ends[0]
    assert np.abs(singles - game.exact()[:, 0]).max() > 0.02
    np.testing.assert_array_equal(game.exact(), make_closed_form_game(name, n, seed=5).exact())
    with pytest.raises(ValueError, match="closed-form"):
        make_closed_form_game("triples", n)
