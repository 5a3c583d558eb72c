"""Masked batch composition: equals a naive per-coalition loop; memory bounded by the chunk."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from eac.kernels.compose import (
    baseline_pixels,
    compose_batch,
    compose_chunks,
    flatten_masks,
    union_keep,
)

from tests.explainer_fakes import FakeClassifier, random_image

HW = (24, 20)


def _random_masks(n, hw=HW, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, *hw), bool)
    for i in range(n):  # random rectangles: they overlap and leave holes
        y0, x0 = rng.integers(0, hw[0] - 4), rng.integers(0, hw[1] - 4)
        masks[i, y0 : y0 + rng.integers(3, 12), x0 : x0 + rng.integers(3, 12)] = True
    return masks


def _naive(image, base, masks, coalitions, invert=False):
    """One image at a time, pixel union by logical or."""
    out = []
    for row in coalitions:
        keep = np.zeros(masks.shape[1:], bool)
        for i, on in enumerate(row):
            if on:
                keep |= masks[i]
        if invert:
            keep = ~keep
        out.append(np.where(keep[None], image, base))
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("baseline", ["black", "mean", "blur"])
@pytest.mark.parametrize("invert", [False, True])
def test_compose_equals_naive_loop(baseline, invert):
    clf = FakeClassifier(hw=HW)
    crop = random_image(HW, seed=3)
    masks = _random_masks(7)
    rng = np.random.default_rng(1)
    coalitions = rng.random((40, 7)) < 0.5
    coalitions[0] = False
    coalitions[1] = True
    img_n, base_n = clf.normalize(np.stack([crop, baseline_pixels(crop, baseline)]))
    got = compose_batch(img_n, base_n, flatten_masks(masks), coalitions, invert=invert)
    want = _naive(img_n, base_n, masks, coalitions, invert=invert)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_black_baseline_is_normalised_zero_pixel():
    clf = FakeClassifier(hw=HW)
    crop = random_image(HW, seed=4)
    img_n, base_n = clf.normalize(np.stack([crop, baseline_pixels(crop, "black")]))
    out = compose_batch(img_n, base_n, flatten_masks(_random_masks(3)), np.zeros((1, 3), bool))
    np.testing.assert_allclose(out[0], np.broadcast_to(clf.baseline_value()[:, None, None], out[0].shape), atol=1e-6)


def test_mean_and_blur_baselines():
    crop = random_image(HW, seed=5)
    mean = baseline_pixels(crop, "mean")
    np.testing.assert_allclose(mean[3, 4], crop.reshape(-1, 3).mean(axis=0), rtol=1e-5)
    blur = baseline_pixels(crop, "blur")
    assert blur.shape == crop.shape and blur.std() < crop.astype(np.float32).std()
    with pytest.raises(ValueError):
        baseline_pixels(crop, "noise")


def test_chunks_equal_one_batch_and_reuse_buffer():
    clf = FakeClassifier(hw=HW)
    crop = random_image(HW, seed=6)
    masks = _random_masks(5)
    img_n, base_n = clf.normalize(np.stack([crop, baseline_pixels(crop, "black")]))
    coalitions = np.random.default_rng(2).random((23, 5)) < 0.5
    flat = flatten_masks(masks)
    whole = compose_batch(img_n, base_n, flat, coalitions)
    ids = set()
    for start, batch in compose_chunks(img_n, base_n, flat, coalitions, chunk_size=6):
        np.testing.assert_array_equal(batch, whole[start : start + len(batch)])
        ids.add(id(batch.base) if batch.base is not None else id(batch))
    assert len(ids) == 1  # one buffer reused


def test_zero_concepts_and_full_cover():
    clf = FakeClassifier(hw=HW)
    crop = random_image(HW, seed=7)
    img_n, base_n = clf.normalize(np.stack([crop, baseline_pixels(crop, "black")]))
    empty = compose_batch(img_n, base_n, flatten_masks(np.zeros((0, *HW), bool)), np.zeros((2, 0), bool))
    np.testing.assert_array_equal(empty, np.broadcast_to(base_n, empty.shape))
    full = compose_batch(img_n, base_n, flatten_masks(np.ones((1, *HW), bool)), np.ones((1, 1), bool))
    np.testing.assert_array_equal(full[0], img_n)
    keep = union_keep(np.ones((1, 1), bool), flatten_masks(np.ones((1, *HW), bool)), invert=True)
    assert not keep.any()


def test_out_buffer_too_small_is_an_error():
    clf = FakeClassifier(hw=HW)
    crop = random_image(HW)
    img_n, base_n = clf.normalize(np.stack([crop, crop]))
    with pytest.raises(ValueError, match="buffer"):
        compose_batch(img_n, base_n, flatten_masks(_random_masks(2)), np.ones((4, 2), bool),
                      out=np.empty((2, 3, *HW), np.float32))


def _peak_bytes(m, chunk):
    hw = (64, 64)
    clf = FakeClassifier(hw=hw)
    crop = random_image(hw, seed=8)
    masks = _random_masks(12, hw)
    img_n, base_n = clf.normalize(np.stack([crop, baseline_pixels(crop, "black")]))
    flat = flatten_masks(masks)
    coalitions = np.random.default_rng(0).random((m, 12)) < 0.5
    tracemalloc.start()
    total = 0.0
    for _, batch in compose_chunks(img_n, base_n, flat, coalitions, chunk_size=chunk):
        total += float(batch[:, 0, 0, 0].sum())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_peak_memory_independent_of_number_of_coalitions():
    chunk = 16
    small, large = _peak_bytes(32, chunk), _peak_bytes(1024, chunk)
    one_batch = chunk * 3 * 64 * 64 * 4
    assert large < small * 1.1 + 64 * 1024, (small, large)
    assert large < 4 * one_batch  # a few batch-sized buffers, not 1024 images (50 MB)


def test_evaluator_peak_memory_bounded_by_batch():
    from eac.engine.evaluator import MaskedEvaluator

    hw = (64, 64)
    clf = FakeClassifier(hw=hw)
    ev = MaskedEvaluator(clf, random_image(hw, seed=1), _random_masks(10, hw), batch_size=16)
    peaks = []
    for m in (32, 1024):
        coalitions = np.random.default_rng(m).random((m, 10)) < 0.5
        tracemalloc.start()
        ev.evaluate(coalitions)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    outputs = 1024 * (5 + 16) * 4  # logits and features kept for every coalition
    assert peaks[1] < peaks[0] * 1.1 + outputs + 64 * 1024, peaks
