"""Insertion / deletion AUC against the reference computation written plainly."""

from __future__ import annotations

import numpy as np
import pytest
from eac.engine.errors import ExplainError
from eac.engine.evaluator import MaskedEvaluator
from eac.engine.metrics import (
    curve_auc,
    insertion_deletion,
    random_ranking_auc,
    rankdata,
    ranked_coalitions,
    spearman,
)

from tests.explainer_fakes import FakeClassifier, grid_masks, random_image


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_auc(clf, crop, masks, ranking, y, delete=False):
    """As the reference main script: cumulative union masks, (1 − mask) for deletion,
    image * mask on uint8, cap at the full-image probability, divide, trapezoid on k/N·100."""
    p_org = _softmax(clf.run(clf.normalize(crop[None])).logits[0])[y]
    auc_mask = np.array([masks[ranking[: i + 1]].sum(0) for i in range(len(ranking))]).astype(bool)[..., None]
    if delete:
        auc_mask = 1 - auc_mask
    images = (crop[None] * auc_mask).astype(np.uint8)
    out = _softmax(clf.run(clf.normalize(images)).logits)[:, y]
    out[out >= p_org] = p_org
    out = out / p_org
    x = np.arange(1, len(out) + 1) / len(out) * 100
    area = 0.0
    for i in range(1, len(out)):
        area += (x[i] - x[i - 1]) * (out[i] + out[i - 1]) / 2
    return area


@pytest.fixture(scope="module")
def setup():
    clf = FakeClassifier(seed=2, scale=3.0)
    crop = random_image(seed=3)
    masks = grid_masks(rows=2, cols=3)
    masks[0] |= masks[4]  # overlap
    masks[5][:] = False
    masks[5][:4, :4] = True  # a small concept; the union does not cover everything
    return clf, crop, masks


@pytest.mark.parametrize("ranking", [[0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 2, 4], [2, 4, 0, 5, 1, 3]])
@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_insertion_deletion_equal_reference(setup, ranking, batch_size):
    clf, crop, masks = setup
    ev = MaskedEvaluator(clf, crop, masks, batch_size=batch_size)
    got = insertion_deletion(ev, np.array(ranking), 1)
    assert got["insertion"] == pytest.approx(reference_auc(clf, crop, masks, ranking, 1), abs=1e-4)
    assert got["deletion"] == pytest.approx(reference_auc(clf, crop, masks, ranking, 1, delete=True), abs=1e-4)
    assert ev.num_evaluations == 1 + 2 * len(masks)
    assert 0 <= got["deletion"] <= 100 and 0 <= got["insertion"] <= 100


def test_curve_auc_caps_and_scales():
    # The reference integrates from x = 100/N (top concept alone) to 100: a flat curve at the
    # full-image probability scores 100·(1 − 1/N), not 100.
    assert curve_auc(np.array([0.5, 0.5, 0.5]), 0.5) == pytest.approx(100.0 * 2 / 3)
    assert curve_auc(np.array([0.9, 0.9]), 0.5) == pytest.approx(50.0)  # capped at the full-image prob
    assert curve_auc(np.array([0.0, 0.5]), 0.5) == pytest.approx(25.0)
    assert curve_auc(np.array([0.25]), 0.5) == pytest.approx(50.0)  # N = 1: the one normalised point, 0-100
    assert np.isnan(curve_auc(np.array([]), 0.5))


def test_ranked_coalitions_and_bad_rankings():
    steps = ranked_coalitions(np.array([2, 0, 1]), 3)
    np.testing.assert_array_equal(steps, [[False, False, True], [True, False, True], [True, True, True]])
    with pytest.raises(ExplainError, match="permutation"):
        ranked_coalitions(np.array([0, 0, 1]), 3)


def test_zero_concepts_and_bad_target(setup):
    clf, crop, _ = setup
    ev = MaskedEvaluator(clf, crop, np.zeros((0, 32, 32), bool))
    out = insertion_deletion(ev, np.zeros(0, int), 0)
    assert np.isnan(out["insertion"]) and np.isnan(out["deletion"])
    with pytest.raises(ExplainError, match="out of range"):
        insertion_deletion(ev, np.zeros(0, int), 7)


def test_good_ranking_beats_random_and_reverse(setup):
    clf, crop, masks = setup
    ev = MaskedEvaluator(clf, crop, masks)
    # A ranking by single-concept insertion gain is a strong insertion ranking.
    single = _softmax(ev.evaluate(np.eye(len(masks), dtype=bool)).logits)[:, 1]
    good = np.argsort(-single)
    best = insertion_deletion(ev, good, 1)
    worst = insertion_deletion(ev, good[::-1], 1)
    rnd = random_ranking_auc(ev, 1, np.random.default_rng(0), repeats=16)
    assert best["insertion"] > rnd["insertion"] > worst["insertion"]


def test_spearman_and_ranks():
    np.testing.assert_array_equal(rankdata([3.0, 1.0, 2.0, 2.0]), [4.0, 1.0, 2.5, 2.5])
    a = np.array([0.3, -0.1, 0.2, 0.05])
    assert spearman(a, a * 5 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.ones(4)))
    # Against the textbook formula without ties: 1 − 6 Σd² / (n(n²−1)).
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=9), rng.normal(size=9)
    d = rankdata(x) - rankdata(y)
    assert spearman(x, y) == pytest.approx(1 - 6 * (d**2).sum() / (9 * 80))
