"""Concepts scored against known objects (eac.bench.scene_metrics): recall, near-duplicates, leftovers."""

from __future__ import annotations

import numpy as np
from eac.bench import scene_metrics as sm


def box(y0, y1, x0, x1, size=40):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_recall_duplicates_and_leftovers():
    a, b = box(2, 12, 2, 12), box(20, 30, 20, 30)
    objects = np.stack([a, b])
    background = ~objects.any(axis=0)
    almost_a = a.copy()
    almost_a[2, 2] = False  # IoU 0.99 with a: recovers it, and is a near-duplicate of a
    part_of_b = box(20, 24, 20, 30)  # 40 % of b
    loose_b = box(19, 31, 19, 31)  # IoU 100/144 = 0.69 with b
    piece = box(32, 40, 0, 20)  # only background
    merged = box(0, 32, 0, 32)  # both objects and the background between them
    concepts = np.stack([a, almost_a, part_of_b, loose_b, background, piece, merged])
    score = sm.score_scene(concepts, objects)
    assert score.objects == 2 and score.recovered == 1  # b has no concept of IoU ≥ 0.85
    assert score.best_iou[0] == 1.0 and 0.6 < score.best_iou[1] < 0.85
    assert score.duplicates == 2  # a and almost_a, each counted
    assert score.leftovers == {"object part": 1, "imprecise object": 1, "background": 1, "background piece": 1,
                               "merged objects": 1}
    summary = sm.summarise([score, sm.score_scene(np.zeros((0, 40, 40), bool), objects)])
    assert summary["recall"] == 0.25 and summary["concepts_per_scene"] == 3.5
    assert summary["duplicate_fraction"] == 2 / 7


def test_exact_binomial_interval_inline_values():
    # Clopper-Pearson bounds (as scipy.stats.binomtest(k, n).proportion_ci(method="exact") gives them).
    np.testing.assert_allclose(sm.exact_binomial_interval(5, 100), (0.0164319, 0.1128349), atol=1e-6)
    np.testing.assert_allclose(sm.exact_binomial_interval(1, 4), (0.0063095, 0.8058796), atol=1e-6)
    np.testing.assert_allclose(sm.exact_binomial_interval(0, 48), (0.0, 0.0739728), atol=1e-6)
    np.testing.assert_allclose(sm.exact_binomial_interval(48, 48), (0.9260272, 1.0), atol=1e-6)
    assert all(np.isnan(sm.exact_binomial_interval(0, 0)))


def test_ratio_interval_inline_cases():
    lo, hi = sm.ratio_interval(np.array([1, 1, 1]), np.array([4, 4, 4]))
    # identical scenes: the bootstrap has nothing to resample; the exact interval of 3 in 12 remains
    np.testing.assert_allclose((lo, hi), sm.exact_binomial_interval(3, 12))
    assert lo < 0.25 < hi
    lo, hi = sm.ratio_interval(np.array([4, 4]), np.array([4, 4]))
    assert hi == 1.0 and lo < 1.0  # all recovered: still an interval, not 100-100
    assert all(np.isnan(sm.ratio_interval(np.zeros(0), np.zeros(0))))
    assert all(np.isnan(sm.ratio_interval(np.zeros(3), np.zeros(3))))
    lo, hi = sm.ratio_interval(np.array([0, 2, 0, 2]), np.array([4, 4, 4, 4]))
    assert 0.0 <= lo < 0.25 < hi < 1.0


def test_ratio_interval_covers_the_true_fraction_where_a_per_concept_interval_does_not():
    # Near-duplicates come in pairs (both concepts count), so concepts are not independent draws: a binomial
    # interval over concepts is too narrow; resampling scenes is not. 300 simulated 96-scene studies.
    rng = np.random.default_rng(5)
    q = 0.06
    truth = 2 * 2 * q / 4.5  # E[duplicates] / E[concepts] per scene
    scene_bootstrap = per_concept = 0
    trials = 300
    for t in range(trials):
        concepts = rng.integers(4, 6, 96)
        duplicates = 2 * rng.binomial(2, q, 96)
        lo, hi = sm.ratio_interval(duplicates, concepts, resamples=1000, seed=t)
        scene_bootstrap += lo <= truth <= hi
        p = duplicates.sum() / concepts.sum()
        half = 1.96 * np.sqrt(p * (1 - p) / concepts.sum())
        per_concept += p - half <= truth <= p + half
    assert scene_bootstrap / trials >= 0.9
    assert per_concept / trials < 0.9


def test_summary_carries_intervals_around_its_estimates():
    a = box(2, 12, 2, 12)
    found = sm.score_scene(a[None], a[None])
    missed = sm.score_scene(np.zeros((0, 40, 40), bool), a[None])
    summary = sm.summarise([found, missed, found, found])
    lo, hi = summary["recall_interval"]
    assert lo <= summary["recall"] == 0.75 <= hi and lo < hi
    lo, hi = summary["duplicate_interval"]  # no duplicate among 3 concepts: 0 to the exact upper bound
    assert lo == 0.0 and hi == sm.exact_binomial_interval(0, 3)[1]
