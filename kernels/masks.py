"""Vectorised post-processing of SAM mask candidates (numpy + opencv, plain arrays in and out).

The automatic mask generator produces 3 candidate masks per point prompt as
low-resolution logits (256×256 for SAM, covering the padded 1024×1024 encoder
input). These kernels score and filter them *at low resolution*, map the
survivors straight into the output frame (one bilinear resampling, no
1024×1024 intermediate), and remove duplicates:

* :func:`point_grid` — the regular grid of single-point prompts;
* :func:`longest_side_shape` — SAM's ``ResizeLongestSide`` target shape;
* :func:`stability_scores` — IoU of the masks thresholded at ``t ± offset``;
* :func:`logits_to_frame` — low-res logits → logits over an h×w output frame;
* :func:`masks_to_boxes`, :func:`box_iou`, :func:`nms` — boxes and greedy NMS;
* :func:`remove_small_regions` — fill small holes and drop small islands;
* :class:`MaskData` and :func:`take_rows` — per-candidate fields kept in step.

Conventions follow segment-anything: boxes are ``x0, y0, x1, y1`` with
*inclusive* pixel coordinates (a one-pixel mask has the box ``x, y, x, y``)
and areas ``(x1 - x0) · (y1 - y0)`` in the IoU, as torchvision computes them.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Boxes :func:`nms` compares with each other at once (its block×block IoU matrix).
NMS_BLOCK = 256


def point_grid(n_per_side: int) -> np.ndarray:
    """Points evenly spaced in the unit square, cell centres, row-major (x varies fastest).

    Parameters
    ----------
    n_per_side : int
        Points per side (SAM's ``points_per_side``).

    Returns
    -------
    ndarray of float64, (n_per_side², 2)
        ``(x, y)`` in [0, 1], as ``segment_anything.utils.amg.build_point_grid``.
    """
    if n_per_side < 1:
        raise ValueError(f"points per side must be at least 1, got {n_per_side}")
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1.0 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)  # xs varies along columns
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def longest_side_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after resizing so the longest side is ``long_side`` (rounded half up, as SAM)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def stability_scores(logits: np.ndarray, threshold: float = 0.0, offset: float = 1.0) -> np.ndarray:
    """Stability score of each mask: IoU of ``logits > t + offset`` and ``logits > t - offset``.

    Parameters
    ----------
    logits : ndarray, N×H×W
        Mask logits (any resolution; the generator uses the low-res ones).
    threshold : float
        Mask threshold ``t`` (0 for SAM).
    offset : float
        Threshold offset (SAM's ``stability_score_offset``, 1.0).

    Returns
    -------
    ndarray of float32, N
        Scores in [0, 1]. The high mask is a subset of the low one, so the IoU is
        a ratio of counts; a mask empty at the low threshold scores 0.
    """
    logits = np.asarray(logits)
    n = logits.shape[0]
    flat = logits.reshape(n, int(np.prod(logits.shape[1:])))
    inter = np.count_nonzero(flat > threshold + offset, axis=1)
    union = np.count_nonzero(flat > threshold - offset, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return score.astype(np.float32)


def frame_affine(out_hw: tuple[int, int], valid_hw: tuple[float, float]) -> np.ndarray:
    """Affine map from output-frame pixel (x, y) to low-res logit coordinates.

    The output frame (h×w) is the image that was resized to the encoder input
    and whose resized extent covers ``valid_hw`` low-res pixels (input size / 4,
    possibly fractional). Pixel centres are aligned as in two chained
    ``F.interpolate(..., align_corners=False)`` calls (low-res → input → frame),
    which compose to a single bilinear sampling at these coordinates.

    Returns
    -------
    ndarray of float64, 2×3
        ``[[sx, 0, tx], [0, sy, ty]]`` for ``cv2.warpAffine(..., WARP_INVERSE_MAP)``.
    """
    h, w = out_hw
    sy, sx = valid_hw[0] / h, valid_hw[1] / w
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]], dtype=np.float64)


def logits_to_frame(logits: np.ndarray, out_hw: tuple[int, int], valid_hw: tuple[float, float]) -> np.ndarray:
    """Resample low-res mask logits into the output frame (bilinear, edge-clamped).

    Parameters
    ----------
    logits : ndarray of float32, N×L×L
        Low-resolution logits over the padded encoder input (L = 256 for SAM).
    out_hw : (int, int)
        Output frame size (h, w): the image given to SAM, e.g. a 224×224 crop.
    valid_hw : (float, float)
        Extent of the resized image inside the low-res grid, in low-res pixels
        (``resized_h / 4, resized_w / 4``); the padding beyond it is ignored.

    Returns
    -------
    ndarray of float32, N×h×w
    """
    logits = np.asarray(logits, dtype=np.float32)
    n = logits.shape[0]
    h, w = int(out_hw[0]), int(out_hw[1])
    out = np.empty((n, h, w), dtype=np.float32)
    if n == 0:
        return out
    matrix = frame_affine((h, w), valid_hw)
    # Only rows/columns up to the valid extent (+1 for interpolation) are ever read.
    rows = min(logits.shape[1], math.ceil(valid_hw[0]) + 1)
    cols = min(logits.shape[2], math.ceil(valid_hw[1]) + 1)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for i in range(n):
        out[i] = cv2.warpAffine(logits[i, :rows, :cols], matrix, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return out


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Bounding boxes of boolean masks.

    Parameters
    ----------
    masks : ndarray of bool, N×H×W

    Returns
    -------
    ndarray of int64, N×4
        ``x0, y0, x1, y1`` (inclusive); ``0, 0, 0, 0`` for an empty mask.
    """
    masks = np.asarray(masks, dtype=bool)
    n, h, w = masks.shape
    if n == 0:
        return np.zeros((0, 4), np.int64)
    rows = masks.any(axis=2)  # N×H
    cols = masks.any(axis=1)  # N×W
    top = rows.argmax(axis=1)
    bottom = h - 1 - rows[:, ::-1].argmax(axis=1)
    left = cols.argmax(axis=1)
    right = w - 1 - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([left, top, right, bottom], axis=1).astype(np.int64)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas ``(x1 - x0)·(y1 - y0)`` of N×4 boxes (N,)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of N×4 and M×4 boxes (N×M float64; NaN for two zero-area boxes)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Boxes are visited in descending score order (stable for ties); a box is
    kept unless its IoU with an already kept box is greater than
    ``iou_threshold``.

    Parameters
    ----------
    boxes : ndarray, N×4
    scores : ndarray, N
    iou_threshold : float

    Returns
    -------
    ndarray of int64, K
        Indices of kept boxes, highest score first.

    Notes
    -----
    The boxes are taken :data:`NMS_BLOCK` at a time: a block is compared with
    the boxes kept so far (K×block) and with itself (block×block), never with
    the boxes after it, so the work is O(N·(K + block)) rather than O(N²) — a
    SAM grid's 2 000 candidates of a few dozen objects cost milliseconds.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    n = boxes.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    boxes = boxes[order]
    keep: list[int] = []
    for start in range(0, n, NMS_BLOCK):
        stop = min(n, start + NMS_BLOCK)
        block = boxes[start:stop]
        alive = np.ones(stop - start, dtype=bool)
        if keep:  # suppressed by a box kept in an earlier block
            alive &= ~(box_iou(boxes[np.asarray(keep)], block) > iou_threshold).any(axis=0)
        iou = box_iou(block, block)
        for i in np.flatnonzero(alive):
            if alive[i]:
                keep.append(start + int(i))
                alive &= ~(iou[i] > iou_threshold)
    return order[np.asarray(keep, dtype=np.int64)]


def remove_small_regions(masks: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill holes and remove islands smaller than ``min_area`` pixels (8-connectivity).

    As segment-anything's ``remove_small_regions`` applied with ``"holes"``
    then ``"islands"``: every background component (a hole, or a piece of the
    outside) smaller than ``min_area`` is filled; then foreground components
    smaller than ``min_area`` are removed, except that the largest one is kept
    when all are small.

    Parameters
    ----------
    masks : ndarray of bool, N×H×W
    min_area : int

    Returns
    -------
    masks : ndarray of bool, N×H×W
        Cleaned masks (new array).
    changed : ndarray of bool, N
        Whether each mask was modified.
    """
    masks = np.asarray(masks, dtype=bool)
    out = masks.copy()
    changed = np.zeros(len(masks), dtype=bool)
    if min_area <= 0:
        return out, changed
    for i in range(len(masks)):
        mask = out[i]
        for fill_holes in (True, False):
            working = (mask ^ fill_holes).astype(np.uint8)
            count, labels, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
            sizes = stats[1:, cv2.CC_STAT_AREA]
            small = np.flatnonzero(sizes < min_area) + 1
            if small.size == 0:
                continue
            changed[i] = True
            if fill_holes:
                mask = mask | np.isin(labels, small)
            else:
                keep = np.setdiff1d(np.arange(1, count), small)
                if keep.size == 0:
                    keep = np.array([int(np.argmax(sizes)) + 1])
                mask = np.isin(labels, keep)
        out[i] = mask
    return out, changed


def crop_boxes(hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Crop boxes of SAM's multi-crop mode: the whole image, then 2^i × 2^i overlapping crops per layer i.

    Parameters
    ----------
    hw : (int, int)
        Image size (h, w).
    n_layers : int
        Crop layers after the whole image (SAM's ``crop_n_layers``).
    overlap_ratio : float
        Overlap of neighbouring crops in layer 1, as a fraction of the shorter
        image side (scaled down by 2 per further layer).

    Returns
    -------
    boxes : ndarray of int64, K×4
        ``x0, y0, x1, y1`` (exclusive ends), the whole image first.
    layers : ndarray of int64, K
        Layer of each box (0 for the whole image).
    """
    h, w = int(hw[0]), int(hw[1])
    boxes = [[0, 0, w, h]]
    layers = [0]
    short = min(h, w)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + h) / per_side)
        x0s = [int((crop_w - overlap) * i) for i in range(per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0 in x0s:  # x outer, y inner: segment-anything's order
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)])
                layers.append(layer)
    return np.asarray(boxes, np.int64), np.asarray(layers, np.int64)


def boxes_near_crop_edge(boxes: np.ndarray, crop_box: np.ndarray, image_hw: tuple[int, int],
                         atol: float = 20.0) -> np.ndarray:
    """Which boxes touch an edge of their crop that is not an edge of the image.

    Parameters
    ----------
    boxes : ndarray, N×4
        ``x0, y0, x1, y1`` in the crop's own coordinates.
    crop_box : ndarray, 4
        The crop in the image, ``x0, y0, x1, y1``.
    image_hw : (int, int)
        Image size.
    atol : float
        Distance (pixels) that counts as touching.

    Returns
    -------
    ndarray of bool, N
    """
    boxes = np.asarray(boxes, np.float64)
    crop = np.asarray(crop_box, np.float64)
    shifted = boxes + np.array([crop[0], crop[1], crop[0], crop[1]])
    image = np.array([0.0, 0.0, image_hw[1], image_hw[0]])
    near_crop = np.abs(shifted - crop[None, :]) <= atol
    near_image = np.abs(shifted - image[None, :]) <= atol
    return np.any(near_crop & ~near_image, axis=1)


class MaskData:
    """Parallel per-mask arrays (masks, scores, points...) filtered and joined together.

    Like segment-anything's ``utils.amg.MaskData``: every field holds one entry per
    mask along axis 0, so one :meth:`filter` keeps the fields in step instead of
    indexing each array by hand.

    Parameters
    ----------
    **fields : ndarray
        Arrays with the same length along axis 0.
    """

    def __init__(self, **fields: np.ndarray) -> None:
        self._fields: dict[str, np.ndarray] = {}
        for name, value in fields.items():
            self[name] = value

    def __len__(self) -> int:
        return len(next(iter(self._fields.values()))) if self._fields else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self._fields[name]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        value = np.asarray(value)
        if self._fields and len(value) != len(self):
            raise ValueError(f"field {name!r} has {len(value)} entries, the others {len(self)}")
        self._fields[name] = value

    def keys(self) -> list[str]:
        return list(self._fields)

    def filter(self, keep: np.ndarray) -> MaskData:
        """The entries selected by ``keep`` (boolean mask or integer indices, in that order)."""
        keep = np.asarray(keep)
        return MaskData(**{name: value[keep] for name, value in self._fields.items()})

    @classmethod
    def cat(cls, parts: list[MaskData], empty: dict[str, np.ndarray]) -> MaskData:
        """Join ``parts`` field by field; ``empty`` gives each field's zero-length array when there are none."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(**empty)
        return cls(**{name: np.concatenate([p[name] for p in parts]) for name in empty})


def take_rows(parts: list[np.ndarray], index: np.ndarray) -> np.ndarray:
    """``np.concatenate(parts)[index]`` without building the concatenation.

    Parameters
    ----------
    parts : list of ndarray, each Nᵢ×...
        Arrays with the same trailing shape (at least one).
    index : ndarray of int, K
        Rows of the (virtual) concatenation, in the order wanted.

    Returns
    -------
    ndarray, K×...
        The generator's candidates hold 64 kB of logits each: concatenating a
        whole grid's survivors to keep a few dozen would copy ~100 MB.
    """
    index = np.asarray(index, dtype=np.int64)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    if index.size and (index.min() < 0 or index.max() >= starts[-1]):
        raise IndexError(f"row index out of range for {starts[-1]} rows")
    out = np.empty((len(index), *parts[0].shape[1:]), dtype=parts[0].dtype)
    which = np.searchsorted(starts, index, side="right") - 1
    for k, (part, row) in enumerate(zip(which, index - starts[which], strict=True)):
        out[k] = parts[part][row]
    return out

