"""Shapley / Banzhaf kernels and the surrogates against brute force written plainly."""

from __future__ import annotations

import itertools
from math import comb, factorial

import numpy as np
import pytest
from eac.kernels.shapley import (
    all_coalitions,
    banzhaf_mc,
    coalition_index,
    exact_banzhaf,
    exact_shapley,
    kernel_coalitions,
    kernel_size_distribution,
    permutation_shapley,
    shapley_kernel_weights,
    softmax_value_fn,
    surrogate_exact_values,
    tabulate,
    uniform_coalitions,
)
from eac.kernels.surrogate import bce, fit_linear_logits, fit_pie_sgd, pie_init, softmax


def brute_shapley(v, n):
    """φ_i = Σ_{S ⊆ N∖i} |S|!(n−|S|−1)!/n! (v(S∪i) − v(S)), v a dict frozenset → value."""
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            for s in itertools.combinations(others, size):
                w = factorial(size) * factorial(n - size - 1) / factorial(n)
                phi[i] += w * (v[frozenset(s) | {i}] - v[frozenset(s)])
    return phi


def brute_banzhaf(v, n):
    beta = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            for s in itertools.combinations(others, size):
                beta[i] += (v[frozenset(s) | {i}] - v[frozenset(s)]) / 2 ** (n - 1)
    return beta


def table_to_dict(table, n):
    return {frozenset(i for i in range(n) if (k >> i) & 1): table[k] for k in range(2**n)}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_exact_values_equal_brute_force(n):
    rng = np.random.default_rng(n)
    table = rng.normal(size=2**n)
    v = table_to_dict(table, n)
    np.testing.assert_allclose(exact_shapley(table, n), brute_shapley(v, n), atol=1e-12)
    np.testing.assert_allclose(exact_banzhaf(table, n), brute_banzhaf(v, n), atol=1e-12)
    phi = exact_shapley(table, n)
    assert phi.sum() == pytest.approx(table[-1] - table[0])  # efficiency


def test_exact_values_several_targets_and_coalition_order():
    n = 4
    rng = np.random.default_rng(0)
    table = rng.normal(size=(2**n, 3))
    got = exact_shapley(table, n)
    assert got.shape == (n, 3)
    for t in range(3):
        np.testing.assert_allclose(got[:, t], exact_shapley(table[:, t], n))
    coal = all_coalitions(n)
    np.testing.assert_array_equal(coalition_index(coal), np.arange(2**n))
    assert coal[5].tolist() == [True, False, True, False]


def test_surrogate_exact_equals_brute_force():
    n, k = 6, 4
    rng = np.random.default_rng(3)
    a = rng.normal(scale=1.5, size=(k, n))
    const = rng.normal(size=k)
    targets = np.array([1, 3])
    got = surrogate_exact_values(a, const, targets, rows_per_call=7)  # odd chunking on purpose
    for col, y in enumerate(targets):
        v = {}
        for bits in itertools.product([0, 1], repeat=n):
            b = np.array(bits, float)
            logits = a @ b + const
            p = np.exp(logits - logits.max())
            v[frozenset(np.nonzero(b)[0].tolist())] = p[y] / p.sum()
        np.testing.assert_allclose(got[:, col], brute_shapley(v, n), atol=1e-12)
        np.testing.assert_allclose(surrogate_exact_values(a, const, [y], kind="banzhaf")[:, 0],
                                   brute_banzhaf(v, n), atol=1e-12)


def test_shapley_kernel_weights_formula():
    n = 7
    sizes = np.arange(n + 1)
    w = shapley_kernel_weights(n, sizes)
    assert np.isinf(w[0]) and np.isinf(w[-1])
    for s in range(1, n):
        assert w[s] == pytest.approx((n - 1) / (comb(n, s) * s * (n - s)))
    p = kernel_size_distribution(n)
    assert p.sum() == pytest.approx(1.0) and p[0] == pytest.approx(p[-1]) and p[0] > p[n // 2 - 1]


def test_samplers_pair_and_follow_kernel():
    rng = np.random.default_rng(0)
    u = uniform_coalitions(1000, 9, rng)
    np.testing.assert_array_equal(u[1::2], ~u[0::2])
    assert abs(u.mean() - 0.5) < 0.02
    kc = kernel_coalitions(20000, 9, rng)
    np.testing.assert_array_equal(kc[1::2], ~kc[0::2])
    sizes = kc[0::2].sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= 8
    freq = np.bincount(sizes, minlength=9)[1:] / len(sizes)
    np.testing.assert_allclose(freq, kernel_size_distribution(9), atol=0.015)
    assert uniform_coalitions(7, 3, rng).shape == (7, 3)
    assert kernel_coalitions(5, 1, rng).shape == (5, 1)


def _surrogate_problem(n=8, k=5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(scale=1.2, size=(k, n))
    const = rng.normal(size=k)
    return a, const


# Tolerances: the estimators are unbiased; with these sample counts their standard
# errors are ~1e-3, so 6 standard errors plus 2e-3 absolute is a > 1e-6 false-failure bound.
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rows_per_call", [37, 4096])
def test_permutation_shapley_within_tolerance_of_exact(seed, rows_per_call):
    a, const = _surrogate_problem(seed=seed)
    exact = surrogate_exact_values(a, const, [0, 2])
    est, err = permutation_shapley(softmax_value_fn(a, const, [0, 2]), 8, 2000, np.random.default_rng(seed + 10),
                                   rows_per_call=rows_per_call)
    assert est.shape == err.shape == (8, 2)
    assert np.all(np.abs(est - exact) <= 6 * err + 2e-3)
    assert np.abs(est - exact).max() < 0.02
    # Each permutation's marginals sum to v(full) − v(empty): efficiency holds exactly.
    v = tabulate(softmax_value_fn(a, const, [0, 2]), 8)
    np.testing.assert_allclose(est.sum(axis=0), v[-1] - v[0], atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("rows_per_call", [50, 65536])
def test_banzhaf_mc_within_tolerance_of_exact(seed, shared, rows_per_call):
    a, const = _surrogate_problem(n=6, seed=seed)
    exact = surrogate_exact_values(a, const, [1], kind="banzhaf")
    est, err = banzhaf_mc(softmax_value_fn(a, const, [1]), 6, 20000, np.random.default_rng(seed),
                          shared=shared, rows_per_call=rows_per_call)
    assert np.all(np.abs(est - exact) <= 6 * err + 2e-3)
    assert np.all(err < 5e-3)


def test_banzhaf_mc_is_seeded():
    a, const = _surrogate_problem(n=5)
    f = softmax_value_fn(a, const, [0])
    r1 = banzhaf_mc(f, 5, 1000, np.random.default_rng(4))
    r2 = banzhaf_mc(f, 5, 1000, np.random.default_rng(4))
    np.testing.assert_array_equal(r1[0], r2[0])


# ------------------------------------------------------------------ surrogates


def _naive_pie_sgd(x, t, fc, bias, y, rng, epochs, lr, momentum, batch, skip):
    """The reference fit in W-space (D×N), plain per-batch SGD with momentum."""
    n = x.shape[1]
    w, c = pie_init(n, fc.shape[1], rng)
    vw, vc = np.zeros_like(w), np.zeros_like(c)
    x, t = x[skip:], t[skip:]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), batch):
            idx = order[s : s + batch]
            xb, tb = x[idx], t[idx]
            z = xb @ w.T + c
            logits = z @ fc.T + bias
            sm = softmax(logits)
            p = sm[:, y]
            dp = (p - tb) / np.maximum(p * (1 - p), 1e-12) / len(idx)
            onehot = np.zeros_like(sm)
            onehot[:, y] = 1
            dlog = dp[:, None] * p[:, None] * (onehot - sm)
            dz = dlog @ fc
            vw = momentum * vw + dz.T @ xb
            vc = momentum * vc + dz.sum(0)
            w = w - lr * vw
            c = c - lr * vc
    return fc @ w, fc @ c + bias


def test_pie_sgd_collapsed_form_equals_w_space_sgd():
    rng = np.random.default_rng(0)
    n, d, k, m = 6, 12, 5, 430
    fc = rng.normal(size=(k, d)) / np.sqrt(d)
    bias = rng.normal(size=k) * 0.1
    x = (rng.random((m, n)) < 0.5).astype(float)
    true_a = rng.normal(size=(k, n))
    t = softmax(x @ true_a.T)[:, 2]
    a1, c1, losses = fit_pie_sgd(x, t, fc, bias, 2, np.random.default_rng(7), epochs=5)
    a2, c2 = _naive_pie_sgd(x, t, fc, bias, 2, np.random.default_rng(7), 5, 0.008, 0.9, 100, n)
    np.testing.assert_allclose(a1, a2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(c1, c2, rtol=1e-9, atol=1e-12)
    assert len(losses) == 5


def test_pie_sgd_reduces_loss():
    rng = np.random.default_rng(1)
    n, d, k = 5, 8, 4
    fc = rng.normal(size=(k, d))
    bias = np.zeros(k)
    x = (rng.random((2500, n)) < 0.5).astype(float)
    t = softmax(x @ rng.normal(size=(k, n)).T * 2)[:, 0]
    a, c, losses = fit_pie_sgd(x, t, fc, bias, 0, np.random.default_rng(0))
    assert losses[-1] < losses[0]
    assert bce(softmax(x @ a.T + c)[:, 0], t) == pytest.approx(losses[-1], rel=0.05)


def test_bce_matches_formula_and_clamps():
    p = np.array([0.2, 0.9, 0.0])
    t = np.array([0.1, 1.0, 0.0])
    want = -np.mean([0.1 * np.log(0.2) + 0.9 * np.log(0.8), np.log(0.9), 0.0])
    assert bce(p, t) == pytest.approx(want)
    assert np.isfinite(bce(np.array([0.0]), np.array([1.0])))  # log clamped at -100
    assert bce(np.array([0.0]), np.array([1.0])) == pytest.approx(100.0)


def test_linear_fit_recovers_exact_linear_logits():
    rng = np.random.default_rng(2)
    n, k = 7, 3
    a = rng.normal(size=(k, n))
    c = rng.normal(size=k)
    x = (rng.random((64, n)) < 0.5).astype(float)
    got_a, got_c = fit_linear_logits(x, x @ a.T + c, ridge=0.0)
    np.testing.assert_allclose(got_a, a, atol=1e-10)
    np.testing.assert_allclose(got_c, c, atol=1e-10)
    w = rng.random(64) + 0.1
    got_a, got_c = fit_linear_logits(x, x @ a.T + c, weights=w, ridge=0.0)
    np.testing.assert_allclose(got_a, a, atol=1e-10)


def test_linear_fit_of_features_through_head_equals_fit_of_logits():
    rng = np.random.default_rng(3)
    n, d, k = 5, 9, 4
    x = (rng.random((40, n)) < 0.5).astype(float)
    feats = np.tanh(x @ rng.normal(size=(n, d)))
    fc, bias = rng.normal(size=(k, d)), rng.normal(size=k)
    af, cf = fit_linear_logits(x, feats)
    al, cl = fit_linear_logits(x, feats @ fc.T + bias)
    np.testing.assert_allclose(fc @ af, al, atol=1e-8)
    np.testing.assert_allclose(fc @ cf + bias, cl, atol=1e-8)


@pytest.mark.parametrize("seed", [0, 3])
def test_softmax_banzhaf_fast_path_equals_generic(seed):
    from eac.kernels.shapley import softmax_banzhaf_mc

    a, const = _surrogate_problem(n=9, k=6, seed=seed)
    fast = softmax_banzhaf_mc(a, const, [2, 4], 3000, np.random.default_rng(seed), rows_per_call=500)
    slow = banzhaf_mc(softmax_value_fn(a, const, [2, 4]), 9, 3000, np.random.default_rng(seed), shared=True)
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-12)
    np.testing.assert_allclose(fast[1], slow[1], atol=1e-12)
    exact = surrogate_exact_values(a, const, [2, 4], kind="banzhaf")
    assert np.all(np.abs(fast[0] - exact) <= 6 * fast[1] + 2e-3)


@pytest.mark.parametrize("antithetic", [True, False])
def test_softmax_permutation_fast_path_equals_generic(antithetic):
    from eac.kernels.shapley import softmax_permutation_shapley

    a, const = _surrogate_problem(n=10, k=4, seed=5)
    fast = softmax_permutation_shapley(a, const, [0, 3], 300, np.random.default_rng(9), antithetic=antithetic,
                                       rows_per_call=500)
    slow = permutation_shapley(softmax_value_fn(a, const, [0, 3]), 10, 300, np.random.default_rng(9),
                               antithetic=antithetic, rows_per_call=500)
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-12)
    np.testing.assert_allclose(fast[1], slow[1], atol=1e-12)


def test_logistic_fit_recovers_logistic_data_and_survives_saturation():
    from eac.kernels.surrogate import fit_logistic

    rng = np.random.default_rng(4)
    n = 6
    alpha = rng.normal(scale=2.0, size=n)
    x = (rng.random((300, n)) < 0.5).astype(float)
    p = 1 / (1 + np.exp(-(x @ alpha - 1.0)))
    got_alpha, got_beta = fit_logistic(x, p, ridge=0.0)
    np.testing.assert_allclose(got_alpha, alpha, atol=1e-5)
    assert got_beta == pytest.approx(-1.0, abs=1e-5)
    # Saturated observations (probabilities exactly 0 and 1) give a finite fit.
    hard = (x[:, 0] > 0).astype(float)
    a2, b2 = fit_logistic(x, hard)
    assert np.isfinite(a2).all() and np.isfinite(b2) and a2[0] == max(a2)
