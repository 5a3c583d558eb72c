"""The generated object scenes SAM is trained and tested on: every object's visible mask known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from eac.engine import object_scenes as os_
from eac.engine.scenes import make_scene

SCENES = 60


@pytest.fixture(scope="module")
def scenes():
    return [os_.make_object_scene(np.random.default_rng([5, i])) for i in range(SCENES)]


def test_deterministic_for_a_seed():
    a = os_.make_object_scene(np.random.default_rng(3))
    b = os_.make_object_scene(np.random.default_rng(3))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.object_masks, b.object_masks)
    c = os_.make_object_scene(np.random.default_rng(4))
    assert not np.array_equal(a.image, c.image)


def test_masks_are_disjoint_visible_pieces(scenes):
    min_area = os_.MIN_VISIBLE_PIXELS_128
    for scene in scenes:
        masks = scene.object_masks
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        assert masks.dtype == bool and len(masks) >= 1 and len(masks) == len(scene.shapes) == len(scene.occluded)
        assert masks.sum(axis=0).max() <= 1  # disjoint
        for mask in masks:
            assert mask.sum() >= min_area
            assert cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] == 2  # one piece
        assert np.array_equal(scene.background_mask, ~masks.any(axis=0))


def test_objects_differ_from_what_surrounds_them(scenes):
    """Every object is visible: its mean colour stands out from the ring of pixels just outside it."""
    for scene in scenes:
        image = scene.image.astype(np.float32)
        for mask in scene.object_masks:
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~mask
            if not ring.any():
                continue
            inside, outside = image[mask].mean(axis=0), image[ring].mean(axis=0)
            assert np.linalg.norm(inside - outside) > 15


def test_the_distribution_has_what_the_issue_asks_for(scenes):
    shapes = {s for scene in scenes for s in scene.shapes}
    assert shapes == set(os_.OBJECT_SHAPES)
    assert {scene.background for scene in scenes} == set(os_.BACKGROUNDS)
    counts = [len(scene.object_masks) for scene in scenes]
    assert min(counts) == 1 and max(counts) >= 5
    assert sum(sum(scene.occluded) for scene in scenes) >= 10  # partial occlusion
    border = sum(bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
                 for scene in scenes for m in scene.object_masks)
    assert border >= 10  # objects cut by the border
    areas = np.array([m.sum() for scene in scenes for m in scene.object_masks])
    assert areas.min() < 250 and areas.max() > 1200  # small and large objects


def test_scene_sets_are_reproducible_and_apart():
    held = os_.held_out_scenes(3)
    again = os_.held_out_scenes(3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(held, again))
    train_rng = np.random.default_rng([os_.TRAIN_STREAM, 0, 0])
    trained = [os_.training_scene(train_rng, 0.0) for _ in range(3)]
    assert not any(np.array_equal(h[0], t[0]) for h in held for t in trained)
    demo = os_.held_out_scenes(2, demo=True)
    # the demo's scenes, with make_scene's own objects (the red shape first)
    rng = np.random.default_rng([os_.HELD_OUT_STREAM, 0, 0])
    rng.random()
    assert np.array_equal(demo[0][0], make_scene(rng, 128).image)
