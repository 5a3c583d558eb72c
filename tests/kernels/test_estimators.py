"""residual_shapley: exactness, efficiency, consistency, calibration, stopping, ties, surrogates.

Every threshold here can fail: the discriminating test asserts in the same place that
leave-one-out and the previous surrogate-only estimator miss the bar the new estimator meets.
"""

from __future__ import annotations

import numpy as np
import pytest
from eac.kernels.control import LogisticSurrogate, StrataMC, WindowsMC, evaluate_pairs, linear_terms
from eac.kernels.estimators import (
    SURROGATES,
    kernel_shap,
    leave_one_out,
    residual_shapley,
    surrogate_only_shapley,
)
from eac.kernels.games import make_game
from eac.kernels.shapley import all_coalitions, exact_shapley, tabulate

#: The issue's fidelity bar on interaction games at N = 12–16 with ≤ 512 evaluations.
SPEARMAN_BAR = 0.95
MAX_ERROR_BAR = 0.02
BUDGET = 512


def spearman(a, b):
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def efficiency_gap(values, game, n):
    ends = game(np.array([np.zeros(n, bool), np.ones(n, bool)]))
    return np.abs(values.sum(axis=0) - (ends[1] - ends[0])).max()


def test_enumerates_when_the_budget_covers_every_coalition():
    n = 8
    game = make_game("triples", n, seed=0, classes=(0, 1))
    calls = []

    def value_fn(c):
        calls.append(len(c))
        return game(c)

    est = residual_shapley(value_fn, n, np.random.default_rng(0), max_evaluations=2**n)
    assert est.stop_reason == "enumerated"
    assert est.evaluations == 2**n == sum(calls)
    np.testing.assert_allclose(est.values, game.exact(), atol=1e-12)
    assert np.all(est.stderr == 0)


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("round_size", [16, 64, 200])
def test_efficiency_is_exact_for_every_draw(surrogate, round_size):
    n = 11
    game = make_game("and_or", n, seed=2)
    value_fn = game.with_features if surrogate == "pie" else game
    for seed in range(3):
        est = residual_shapley(value_fn, n, np.random.default_rng(seed), surrogate=surrogate,
                               head=game.head, round_size=round_size, min_evaluations=200,
                               max_evaluations=300)
        assert efficiency_gap(est.values, game, n) <= 1e-9
        assert max(est.info["efficiency_gap"]) <= 1e-9
        assert est.evaluations <= 300


@pytest.mark.parametrize("surrogate", ["pairwise", "none"])
def test_consistent_error_shrinks_as_the_budget_grows(surrogate):
    n = 10
    game = make_game("two_objects", n, seed=1)
    exact = game.exact()
    errors = {}
    for budget in (96, 384, 960):
        err = [np.abs(residual_shapley(game, n, np.random.default_rng(s), surrogate=surrogate,
                                       min_evaluations=budget, max_evaluations=budget).values
                      - exact).max() for s in range(6)]
        errors[budget] = float(np.mean(err))
    assert errors[384] < 0.75 * errors[96]
    assert errors[960] < 0.6 * errors[384]  # most strata enumerated by now


def test_budget_is_used_when_the_stopping_rule_asks_for_it():
    n = 12
    game = make_game("texture", n, seed=0)  # near-ties: the whole ranking never resolves
    small = residual_shapley(game, n, np.random.default_rng(0), rel_tol=0.0, top_k=n,
                             min_evaluations=128, max_evaluations=256)
    large = residual_shapley(game, n, np.random.default_rng(0), rel_tol=0.0, top_k=n,
                             min_evaluations=128, max_evaluations=1024)
    assert small.stop_reason == large.stop_reason == "budget"
    assert small.evaluations == 256 and large.evaluations >= 1000
    exact = game.exact()
    assert np.abs(large.values - exact).max() < np.abs(small.values - exact).max()


def test_calibration_and_no_bias_over_200_seeded_runs():
    n = 9
    game = make_game("triples", n, seed=4)
    exact = game.exact()[:, 0]
    inside, errors = [], []
    for seed in range(200):
        est = residual_shapley(game, n, np.random.default_rng(seed), surrogate="logistic",
                               min_evaluations=96, max_evaluations=96, round_size=32)
        err = est.values[:, 0] - exact
        inside.append(np.abs(err) <= 1.96 * est.stderr[:, 0])
        errors.append(err)
    inside = np.array(inside)
    assert inside.mean() >= 0.9  # pooled over concepts and runs
    assert inside.mean(axis=0).min() >= 0.8  # and no concept is badly covered
    errors = np.array(errors)
    # unbiased: the mean error is within 4 standard errors of 0 for every concept
    z = np.abs(errors.mean(axis=0)) / (errors.std(axis=0, ddof=1) / np.sqrt(len(errors)))
    assert z.max() < 4.0


def test_plain_estimator_is_calibrated_too():
    n = 9
    game = make_game("saturation", n, seed=0)
    exact = game.exact()[:, 0]
    runs = [residual_shapley(game, n, np.random.default_rng(s), surrogate="none",
                             min_evaluations=96, max_evaluations=96) for s in range(60)]
    err = np.array([np.abs(r.values[:, 0] - exact) for r in runs])
    stderr = np.array([r.stderr[:, 0] for r in runs])
    assert (err <= 1.96 * stderr).mean() >= 0.9


@pytest.mark.parametrize(("name", "n"), [("triples", 12), ("texture", 16), ("two_objects", 12)])
def test_discriminating_thresholds(name, n):
    """New estimator meets Spearman ≥ 0.95 and max|err| ≤ 0.02 with ≤ 512 evaluations on every
    seed; leave-one-out and the surrogate-only estimator fail the same bar."""
    game = make_game(name, n, seed=0)
    exact = game.exact()[:, 0]

    def passes(runs):
        return (min(spearman(v, exact) for v in runs) >= SPEARMAN_BAR
                and max(np.abs(v - exact).max() for v in runs) <= MAX_ERROR_BAR)

    seeds = range(3)
    new = [residual_shapley(game, n, np.random.default_rng(s), max_evaluations=BUDGET)
           for s in seeds]
    assert all(e.evaluations <= BUDGET for e in new)
    assert passes([e.values[:, 0] for e in new])
    assert not passes([leave_one_out(game, n)[:, 0]])
    assert not passes([surrogate_only_shapley(game, n, BUDGET, np.random.default_rng(s))[:, 0]
                       for s in seeds])


def test_beats_paired_kernelshap_at_equal_budget():
    n = 14
    game = make_game("and_or", n, seed=5)
    exact = game.exact()
    ours = np.mean([np.abs(residual_shapley(game, n, np.random.default_rng(s),
                                            min_evaluations=BUDGET).values - exact).max()
                    for s in range(3)])
    ks = np.mean([np.abs(kernel_shap(game, n, BUDGET, np.random.default_rng(s)) - exact).max()
                  for s in range(3)])
    assert ours <= 0.5 * ks


def test_stop_reasons():
    n = 12
    # well-separated values: the top 3 resolves early
    weights = np.linspace(3.0, 0.2, n)

    def separated(c):
        return 1.0 / (1.0 + np.exp(-(c.astype(float) @ weights - 6.0)))

    est = residual_shapley(separated, n, np.random.default_rng(0), min_evaluations=64,
                           max_evaluations=1024)
    assert est.stop_reason == "resolved" and est.evaluations < 1024
    game = make_game("texture", n, seed=0)
    est = residual_shapley(game, n, np.random.default_rng(0), top_k=n, rel_tol=0.5,
                           min_evaluations=64, max_evaluations=1024)
    assert est.stop_reason == "precise" and est.evaluations < 1024
    est = residual_shapley(game, n, np.random.default_rng(0), top_k=n, rel_tol=0.0,
                           min_evaluations=64, max_evaluations=200)
    assert est.stop_reason == "budget" and est.evaluations == 200
    assert [h["evaluations"] for h in est.info["history"]] == sorted(
        h["evaluations"] for h in est.info["history"])


def test_tie_groups_hold_symmetric_concepts_and_split_separated_ones():
    n = 12
    weights = np.array([2.0, 2.0, 1.0, 0.6, 0.6, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]) * 1.5

    def game(c):
        return 1.0 / (1.0 + np.exp(-(c.astype(float) @ weights - 5.0)))

    exact = exact_shapley(tabulate(game, n), n)
    est = residual_shapley(game, n, np.random.default_rng(1), surrogate="none", min_evaluations=512)
    groups = est.ties[0]
    assert all(len(g) >= 2 for g in groups)
    member = {i: k for k, g in enumerate(groups) for i in g}
    assert 0 in member and member.get(1) == member[0]  # exactly equal values are tied
    assert member.get(2) != member.get(0)  # 2.0 vs 1.0: resolved
    assert abs(exact[0] - exact[2]) > 0.05
    # a group is a run of rank-adjacent concepts
    order = list(np.argsort(-est.values[:, 0]))
    for g in groups:
        pos = sorted(order.index(i) for i in g)
        assert pos == list(range(pos[0], pos[0] + len(g)))


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_each_surrogate_variant(surrogate):
    n = 13
    game = make_game("two_objects", n, seed=2, classes=(0, 1))
    value_fn = game.with_features if surrogate == "pie" else game
    est = residual_shapley(value_fn, n, np.random.default_rng(0), surrogate=surrogate,
                           head=game.head, min_evaluations=BUDGET)
    assert est.values.shape == est.stderr.shape == (n, 2)
    assert est.info["surrogate"] == surrogate
    err = np.abs(est.values - game.exact()).max()
    assert err <= (0.08 if surrogate == "none" else 0.03)
    if surrogate == "none":
        assert est.info["r2_heldout"] is None
    else:
        assert all(0.5 < r <= 1.0 for r in est.info["r2_heldout"])


def test_surrogate_stratum_terms_by_monte_carlo_above_enumeration_limit():
    n = 18  # > SURROGATE_ENUM_MAX_N: g's stratum terms are sampled, their error in the stderr
    game = make_game("saturation", n, seed=0)
    est = residual_shapley(game, n, np.random.default_rng(0), surrogate="logistic",
                           min_evaluations=BUDGET)
    assert efficiency_gap(est.values, game, n) <= 1e-9
    assert np.abs(est.values - game.exact()).max() <= 4 * est.stderr.max() + 1e-3


def test_bad_arguments_raise_value_error():
    game = make_game("texture", 10)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="surrogate must be"):
        residual_shapley(game, 10, rng, surrogate="tree")
    with pytest.raises(ValueError, match="head"):
        residual_shapley(game, 10, rng, surrogate="pie")
    with pytest.raises(ValueError, match="max_evaluations must be"):
        residual_shapley(game, 10, rng, min_evaluations=10, max_evaluations=20)
    with pytest.raises(ValueError, match="features"):
        residual_shapley(game, 10, rng, surrogate="pie", head=game.head, max_evaluations=300)


# --------------------------------------------------------------------------- the first version, reproduced

#: Values recorded from the estimator before its rewrite for speed (commit 9e5f13f, before any change), for
#: fixed seeds: case → (evaluations, stop reason, values T×N). ``surrogate_mc="strata", refit="rounds"`` must
#: reproduce them: the rewrite changed where the time goes, not what is computed.
FIRST_VERSION = {
    "A": (512, "budget", [
        [0.1235371649249, 0.2179472037198, -0.02649655914048, -0.03854013345485, -0.1038595170672,
         0.06880251014047, 0.01941892770748, 0.09234985228047, 0.3276757676897, -0.1508665497903,
         0.1258748601422, 0.030521362427],
        [-0.09584863903076, -0.1208684343076, 0.08427805701724, -0.02127805848403, 0.1447001744562,
         0.02198034564886, 0.0175780790947, -0.05563029067166, -0.2410632437531, 0.1655880545919,
         0.01507998945881, 0.06858302001948],
    ]),
    "C": (430, "precise", [
        [0.02500329882781, 0.06058053997498, 0.0263175259114, 0.03407512426461, 0.05996791466289,
         0.04575044694312, 0.07091810566602, 0.007571533998114, -0.001358341553466, 0.03454884081568,
         0.03387204940222, 0.3696771964716, 0.02965374304058, 0.03943908835881, 0.002052884076126,
         0.009969716477192, 0.0111698053292, 0.03032159345485, 0.02698214124258, 0.00935605405541],
    ]),
    "D": (506, "resolved", [
        [0.04214445260906, 0.01126784316317, -0.01760334912752, 0.03905249470999, 0.03803824933268,
         0.03985403576184, 0.165177694446, 0.06357073466688, 0.04998077214146, -0.0344307945558,
         0.02962492893355, 0.08578699287311, 0.01450727062916, -0.04052930549689, 0.004430348031293,
         0.1130898839152, -0.003200335398261, 0.05718770548038, -0.07623226795694, 0.03751759446833,
         -0.07600135362774, 0.0762877737556, -0.002020398542941, 0.09024334308838, -0.002696553290776,
         -0.01507510508024, -0.02464059615893, -0.02548172582604, 0.1451767189017, 0.007382110386504,
         0.02852278504045, 0.05749892663176],
    ]),
    "E": (238, "precise", [
        [0.2006402066081, 0.01109249212333, 0.1388921512554, 0.10849567583, -0.0146047357952, 0.05703818885384,
         0.03624385707246, 0.1823153397801, -0.002038779952658, 0.1862591554339, 0.04469185992772],
    ]),
}


def _logistic_pairs_32(c):
    """A logistic game with pairwise products over 32 concepts (the issue's N for the time target)."""
    r = np.random.default_rng(7)
    a = r.normal(0.0, 0.5, 32)
    ii, jj, g = r.integers(0, 32, 10), r.integers(0, 32, 10), r.uniform(1, 2, 10)
    b = np.asarray(c, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(b @ a + (b[:, ii] * b[:, jj]) @ g - 2.0)))


FIRST_VERSION_CASES = {
    # case: (value function, n, options, seed) — the surrogate terms by enumeration (A, E) and by Monte Carlo
    # (C: n = 20, D: n = 32); two targets (A); the PIE surrogate (E).
    "A": (lambda: make_game("triples", 12, seed=0, classes=(0, 1)), 12,
          {"min_evaluations": 256, "max_evaluations": 512, "round_size": 64}, 3),
    "C": (lambda: make_game("saturation", 20, seed=0), 20,
          {"min_evaluations": 384, "max_evaluations": 512, "round_size": 64}, 1),
    "D": (lambda: _logistic_pairs_32, 32, {"min_evaluations": 384, "max_evaluations": 512, "round_size": 64}, 0),
    "E": (lambda: make_game("and_or", 11, seed=2), 11,
          {"surrogate": "pie", "min_evaluations": 200, "max_evaluations": 300, "round_size": 48}, 2),
}


@pytest.mark.parametrize("case", sorted(FIRST_VERSION_CASES))
def test_first_version_settings_reproduce_the_recorded_values(case):
    make, n, options, seed = FIRST_VERSION_CASES[case]
    game = make()
    pie = options.get("surrogate") == "pie"
    est = residual_shapley(game.with_features if pie else game, n, np.random.default_rng(seed),
                           head=game.head if pie else None, surrogate_mc="strata", refit="rounds", **options)
    evaluations, stop, values = FIRST_VERSION[case]
    assert (est.evaluations, est.stop_reason) == (evaluations, stop)
    np.testing.assert_allclose(est.values.T, np.array(values), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- the surrogate's stratum terms


def test_linear_control_variate_terms_have_the_closed_form():
    """E_k[(a·(2b − 1))·c(S)] over every size-k coalition equals linear_terms(a) for every k."""
    n = 8
    a = np.random.default_rng(0).normal(size=(n, 2))
    closed = linear_terms(a, n)
    coal = all_coalitions(n)
    sizes = coal.sum(axis=1)
    for k in range(1, n):
        s = coal[sizes == k]
        c = np.where(s, 1.0 / k, -1.0 / (n - k))
        d = (2.0 * s - 1.0) @ a
        np.testing.assert_allclose((c.T @ d) / len(s), closed, atol=1e-12)


def test_windows_terms_beat_4096_pairs_per_stratum_with_an_eighth_of_the_rows():
    """Same surrogate at N = 24: the windows design (512 rows) has a lower Monte-Carlo variance than the
    first version's 4096 independent pairs per stratum, and the two estimates agree."""
    n = 24
    rng = np.random.default_rng(3)
    g = LogisticSurrogate(rng.normal(0.0, 0.6, (n, 1)), np.array([-2.0]), np.array([0, 2, 5]), np.array([1, 3, 9]),
                          np.array([[2.0], [-1.5], [1.0]]))
    strata = list(range(2, n // 2 + 1))
    frac = {k: np.array([1.0]) for k in strata}
    seen = rng.random((300, n)) < rng.random((300, 1))  # evaluated pairs the linear control variate is fitted on
    pairs = (seen, evaluate_pairs([g], seen))
    windows, strat = WindowsMC(n), StrataMC(n)
    windows.draw(strata, np.random.default_rng(1))
    strat.draw(strata, np.random.default_rng(2))
    new = windows.terms([g], frac, strata, pairs)
    old = strat.terms([g], frac, strata)
    assert new.var.mean() < old.var.mean()
    z = np.abs(new.values - old.values) / np.sqrt(new.var + old.var)
    assert z.max() < 4.5


def test_windows_terms_are_calibrated_and_unbiased():
    """N = 16 (> the windows mode's enumeration limit): intervals over 80 seeded runs hold the exact values."""
    n = 16
    game = make_game("saturation", n, seed=1)
    exact = game.exact()[:, 0]
    errors, inside = [], []
    for seed in range(80):
        est = residual_shapley(game, n, np.random.default_rng(seed), min_evaluations=160, max_evaluations=160)
        assert est.info["surrogate_mc"] == "windows"
        err = est.values[:, 0] - exact
        errors.append(err)
        inside.append(np.abs(err) <= 1.96 * est.stderr[:, 0])
    assert np.mean(inside) >= 0.9
    errors = np.array(errors)
    z = np.abs(errors.mean(axis=0)) / (errors.std(axis=0, ddof=1) / np.sqrt(len(errors)))
    assert z.max() < 4.0
