"""kernels/masks.py against segment-anything's own (torch) post-processing and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from eac.bench import tvshim
from eac.kernels import masks as mk

torch = pytest.importorskip("torch")
with tvshim.installed():  # segment-anything's transforms import torchvision
    amg = pytest.importorskip("segment_anything.utils.amg")
    transforms = pytest.importorskip("segment_anything.utils.transforms")


def blob_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """N×H×W masks made of random rectangles and discs (some empty)."""
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w), bool)
    for i in range(n):
        if i % 7 == 3:
            continue  # empty mask
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            r = rng.integers(1, max(2, min(h, w) // 3))
            if rng.random() < 0.5:
                out[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                out[i] |= (abs(yy - cy) <= r) & (abs(xx - cx) <= r // 2 + 1)
    return out


def test_point_grid_matches_segment_anything():
    for n in (1, 2, 7, 32):
        np.testing.assert_allclose(mk.point_grid(n), amg.build_point_grid(n), atol=1e-12)
    np.testing.assert_allclose(mk.point_grid(2), [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    with pytest.raises(ValueError):
        mk.point_grid(0)


@pytest.mark.parametrize("hw", [(224, 224), (300, 451), (451, 300), (1, 5), (2000, 1024), (683, 1024)])
def test_longest_side_shape_matches_resize_longest_side(hw):
    assert mk.longest_side_shape(*hw, 1024) == transforms.ResizeLongestSide.get_preprocess_shape(*hw, 1024)


def test_stability_scores_match_segment_anything():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((12, 40, 50)) * 3).astype(np.float32)
    logits[0] = -5.0  # empty at both thresholds: eac scores 0 (segment-anything: NaN)
    logits[1] = 5.0  # full: 1
    ref = amg.calculate_stability_score(torch.from_numpy(logits), 0.0, 1.0).numpy()
    got = mk.stability_scores(logits, 0.0, 1.0)
    assert got.shape == (12,) and got.dtype == np.float32
    assert got[0] == 0.0 and np.isnan(ref[0])
    np.testing.assert_allclose(got[1:], ref[1:], rtol=1e-6)
    assert got[1] == 1.0
    assert mk.stability_scores(np.zeros((0, 4, 4), np.float32)).shape == (0,)


def test_masks_to_boxes_match_segment_anything():
    rng = np.random.default_rng(1)
    masks = blob_masks(rng, 30, 37, 53)
    masks[5] = False
    masks[6] = False
    masks[6, 10, 20] = True  # one pixel: box (20, 10, 20, 10)
    ref = amg.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    got = mk.masks_to_boxes(masks)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got[5], [0, 0, 0, 0])
    np.testing.assert_array_equal(got[6], [20, 10, 20, 10])
    assert mk.masks_to_boxes(np.zeros((0, 4, 4), bool)).shape == (0, 4)


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            x0, y0 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            x1, y1 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
            a = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            b = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            union = a + b - inter
            if union > 0 and inter / union > thresh:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.7, 1.0])
def test_nms_matches_brute_force_and_shim(thresh):
    rng = np.random.default_rng(2)
    xy = rng.integers(0, 60, size=(80, 2))
    wh = rng.integers(0, 30, size=(80, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float64)
    scores = rng.permutation(80).astype(np.float64)  # distinct scores
    got = mk.nms(boxes, scores, thresh)
    assert got.tolist() == brute_force_nms(boxes, scores, thresh)
    shim = tvshim.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).numpy()
    assert got.tolist() == shim.tolist()
    if thresh == 1.0:
        assert len(got) == 80


@pytest.mark.parametrize("block", [1, 17, 256, 1000])
def test_nms_in_blocks_matches_brute_force(monkeypatch, block):
    # A crowd (many boxes suppressed by boxes kept in earlier blocks) and zero-area boxes.
    rng = np.random.default_rng(3)
    xy = rng.integers(0, 50, size=(300, 2))
    boxes = np.concatenate([xy, xy + rng.integers(5, 40, size=(300, 2))], axis=1).astype(np.float64)
    boxes[::37, 2:] = boxes[::37, :2]
    scores = rng.random(300)
    monkeypatch.setattr(mk, "NMS_BLOCK", block)
    got = mk.nms(boxes, scores, 0.5)
    assert got.tolist() == brute_force_nms(boxes, scores, 0.5)
    assert 30 < len(got) < 250  # both outcomes occur
    assert mk.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def two_step_reference(low_res: np.ndarray, input_hw: tuple[int, int], out_hw: tuple[int, int],
                       input_size: int = 1024) -> np.ndarray:
    """segment-anything's Sam.postprocess_masks: upsample to the input size, crop, resize."""
    t = torch.from_numpy(low_res)[:, None]
    up = torch.nn.functional.interpolate(t, (input_size, input_size), mode="bilinear", align_corners=False)
    up = up[..., : input_hw[0], : input_hw[1]]
    return torch.nn.functional.interpolate(up, out_hw, mode="bilinear", align_corners=False)[:, 0].numpy()


@pytest.mark.parametrize("out_hw", [(224, 224), (300, 451), (451, 300), (700, 1400)])
def test_logits_to_frame_matches_two_step_upsampling(out_hw):
    rng = np.random.default_rng(4)
    # smooth logits (as SAM's are): low-frequency field upsampled to 256×256
    coarse = rng.standard_normal((6, 1, 16, 16)).astype(np.float32) * 4
    low = torch.nn.functional.interpolate(torch.from_numpy(coarse), (256, 256), mode="bicubic",
                                          align_corners=False)[:, 0].numpy()
    input_hw = mk.longest_side_shape(*out_hw, 1024)
    ref = two_step_reference(low, input_hw, out_hw)
    got = mk.logits_to_frame(low, out_hw, (input_hw[0] / 4, input_hw[1] / 4))
    assert got.shape == (6, *out_hw) and got.dtype == np.float32
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < 0.02 * scale
    agree = ((got > 0) == (ref > 0)).mean()
    assert agree > 0.998
    assert mk.logits_to_frame(low[:0], out_hw, (200.0, 200.0)).shape == (0, *out_hw)


def test_box_iou_brute_force():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [3, 3, 3, 3]], float)
    b = np.array([[0, 0, 10, 10], [10, 10, 20, 20]], float)
    iou = mk.box_iou(a, b)
    np.testing.assert_allclose(iou[0], [1.0, 0.0])
    np.testing.assert_allclose(iou[1, 0], 25 / 175)
    np.testing.assert_allclose(iou[1, 1], 25 / 175)
    assert iou[2, 0] == 0.0


@pytest.mark.parametrize("min_area", [0, 5, 40, 400])
def test_remove_small_regions_matches_segment_anything(min_area):
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 14, 48, 64)
    # sprinkle specks and holes
    noise = rng.random(masks.shape) < 0.01
    masks ^= noise
    got, changed = mk.remove_small_regions(masks, min_area)
    for i in range(len(masks)):
        if min_area == 0:
            np.testing.assert_array_equal(got[i], masks[i])
            assert not changed[i]
            continue
        ref, c1 = amg.remove_small_regions(masks[i], min_area, mode="holes")
        ref, c2 = amg.remove_small_regions(ref, min_area, mode="islands")
        np.testing.assert_array_equal(got[i], ref)
        assert changed[i] == (c1 or c2)
    assert changed.any() == (min_area > 0)


@pytest.mark.parametrize("hw,layers", [((224, 224), 1), ((300, 451), 2), ((451, 300), 1), ((50, 80), 0)])
def test_crop_boxes_match_segment_anything(hw, layers):
    boxes, layer_idx = mk.crop_boxes(hw, layers, 512 / 1500)
    ref_boxes, ref_layers = amg.generate_crop_boxes(hw, layers, 512 / 1500)
    assert boxes.tolist() == ref_boxes and layer_idx.tolist() == ref_layers
    assert len(boxes) == sum(4**i for i in range(layers + 1))


def test_boxes_near_crop_edge_match_segment_anything():
    rng = np.random.default_rng(6)
    crop_box = [100, 50, 300, 250]
    xy = rng.integers(0, 200, size=(60, 2))
    boxes = np.concatenate([xy, np.minimum(xy + rng.integers(0, 120, size=(60, 2)), 199)], axis=1)
    ref = amg.is_box_near_crop_edge(torch.from_numpy(boxes), crop_box, [0, 0, 400, 300]).numpy()
    got = mk.boxes_near_crop_edge(boxes, np.array(crop_box), (300, 400))
    np.testing.assert_array_equal(got, ref)
    assert got.any() and not got.all()


def test_take_rows_is_concatenate_then_index():
    parts = [np.arange(6).reshape(3, 2), np.arange(10, 12).reshape(1, 2), np.arange(20, 24).reshape(2, 2)]
    got = mk.take_rows(parts, np.array([5, 0, 3, 3, 2]))
    np.testing.assert_array_equal(got, [[22, 23], [0, 1], [10, 11], [10, 11], [4, 5]])
    assert mk.take_rows(parts, np.zeros(0, np.int64)).shape == (0, 2)
    with pytest.raises(IndexError):
        mk.take_rows(parts, np.array([6]))

