"""SAM-free concept sources: SLIC, grid, user masks and label images; scenes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from eac.engine.concepts import Concepts, Frame
from eac.engine.errors import ConceptError
from eac.engine.images import resize_crop_frame
from eac.engine.scenes import KEY_COLOUR, SHAPES, make_scene, scene_concepts
from eac.engine.sources import GridSource, MaskSource, SuperpixelSource, make_source, map_to_frame
from eac.kernels.superpixels import enforce_connectivity, grid_labels, labels_to_masks, slic


def _quadrants(size: int = 64) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    h = size // 2
    img[:h, :h] = (255, 0, 0)
    img[:h, h:] = (0, 255, 0)
    img[h:, :h] = (0, 0, 255)
    img[h:, h:] = (255, 255, 0)
    return img


def test_slic_follows_strong_edges():
    img = _quadrants()
    labels = slic(img, n_segments=4, compactness=1.0)
    assert labels.shape == (64, 64)
    # Every quadrant is a single superpixel, and the four are distinct.
    quads = [labels[:32, :32], labels[:32, 32:], labels[32:, :32], labels[32:, 32:]]
    assert all(len(np.unique(q)) == 1 for q in quads)
    assert len({int(q[0, 0]) for q in quads}) == 4


def test_slic_regions_are_connected_and_cover_everything():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
    labels = slic(img, n_segments=12)
    assert labels.min() == 0
    assert set(np.unique(labels)) == set(range(labels.max() + 1))
    for value in np.unique(labels):
        n, _ = cv2.connectedComponents((labels == value).astype(np.uint8), connectivity=4)
        assert n == 2, f"label {value} is not one connected region"


def test_enforce_connectivity_merges_small_fragments():
    labels = np.array([[0, 0, 0, 0],
                       [0, 1, 0, 0],
                       [0, 0, 2, 2],
                       [0, 0, 2, 2]])
    out = enforce_connectivity(labels, min_size=2)
    expected = np.array([[0, 0, 0, 0],
                         [0, 0, 0, 0],
                         [0, 0, 1, 1],
                         [0, 0, 1, 1]])
    np.testing.assert_array_equal(out, expected)


def test_grid_labels_and_masks():
    labels = grid_labels((6, 9), 6)
    masks, values = labels_to_masks(labels)
    assert masks.shape == (len(values), 6, 9)
    np.testing.assert_array_equal(masks.sum(axis=0), np.ones((6, 9)))  # a partition
    masks, values = labels_to_masks(np.array([[0, 3], [3, 5]]), ignore=0)
    np.testing.assert_array_equal(values, [3, 5])
    np.testing.assert_array_equal(masks, [[[False, True], [True, False]], [[False, False], [False, True]]])


@pytest.mark.parametrize("source", [SuperpixelSource(10), GridSource(9)])
def test_sources_return_concepts_in_the_frame(source):
    crop = _quadrants(48)
    frame = Frame((100, 80), (60, 48), (6, 0, 48, 48))
    concepts = source(crop, frame)
    assert isinstance(concepts, Concepts)
    assert concepts.masks.shape[1:] == (48, 48)
    assert concepts.frame == frame
    assert len(concepts) >= 4
    assert concepts.masks.any(axis=(1, 2)).all()


def test_make_source_names():
    assert isinstance(make_source("superpixels"), SuperpixelSource)
    assert isinstance(make_source("grid", 4), GridSource)
    with pytest.raises(ConceptError):
        make_source("felzenszwalb")
    with pytest.raises(ConceptError):
        GridSource(0)


def test_mask_source_in_crop_frame_and_original_frame():
    frame = resize_crop_frame((40, 60), resize=20, crop=20)  # resized 20×30, crop columns 5..25
    crop = np.zeros((20, 20, 3), np.uint8)
    # Original-frame mask: the right half of the original image.
    original = np.zeros((1, 40, 60), bool)
    original[0, :, 30:] = True
    concepts = MaskSource(original)(crop, frame)
    assert concepts.masks.shape == (1, 20, 20)
    np.testing.assert_array_equal(concepts.masks[0], map_to_frame(original, frame)[0])
    assert concepts.masks[0, :, 10:].all() and not concepts.masks[0, :, :10].any()
    assert "mapped_from" in concepts.info
    # Crop-frame masks pass through untouched.
    direct = np.zeros((2, 20, 20), bool)
    direct[0, :5] = True
    direct[1, 5:] = True
    out = MaskSource(direct)(crop, frame)
    np.testing.assert_array_equal(out.masks, direct)
    assert "mapped_from" not in out.info
    with pytest.raises(ConceptError, match="give masks in one of those sizes"):
        MaskSource(np.zeros((1, 7, 7), bool))(crop, frame)


def test_mask_source_files(tmp_path):
    labels = np.zeros((16, 16), np.uint8)
    labels[:8] = 1
    labels[8:, :8] = 2
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    np.save(tmp_path / "masks.npy", np.stack([labels == 1, labels == 2]))
    crop = np.zeros((16, 16, 3), np.uint8)
    frame = Frame.identity((16, 16))
    from_png = MaskSource.from_file(tmp_path / "labels.png")(crop, frame)
    from_npy = MaskSource.from_file(tmp_path / "masks.npy")(crop, frame)
    assert len(from_png) == 2  # label 0 is "no concept"
    np.testing.assert_array_equal(from_png.masks, from_npy.masks)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ConceptError, match=r"bad.npy"):
        MaskSource.from_file(tmp_path / "bad.npy")
    with pytest.raises(ConceptError, match="no such masks file"):
        MaskSource.from_file(tmp_path / "missing.npy")
    with pytest.raises(ConceptError):
        MaskSource(np.full((2, 4, 4), 3))


def test_scenes_are_deterministic_and_key_is_red():
    a = make_scene(np.random.default_rng(5), 96)
    b = make_scene(np.random.default_rng(5), 96)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.class_name in SHAPES
    assert a.key_mask.sum() > 0
    mean_key = a.image[a.key_mask].mean(axis=0)
    assert np.abs(mean_key - np.array(KEY_COLOUR)).max() < 30
    # Nothing else in the scene is that red.
    redness = a.image[..., 0].astype(int) - a.image[..., 1:].astype(int).max(axis=-1)
    assert (redness[~a.key_mask] > 100).mean() < 0.01
    concepts = scene_concepts(a)
    np.testing.assert_array_equal(concepts.masks[0], a.key_mask)
    assert not (concepts.masks[0] & concepts.masks[1:].any(axis=0)).any()


def test_concepts_save_load_roundtrip(tmp_path):
    scene = make_scene(np.random.default_rng(1), 64)
    concepts = scene_concepts(scene)
    concepts.timings["x"] = 0.5
    concepts.save(tmp_path / "c.npz")
    back = Concepts.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.masks, concepts.masks)
    assert back.frame == concepts.frame and back.timings == {"x": 0.5}
