"""Which grid prompts SAM's automatic mask generator decodes, and in what order.

segment-anything decodes every point of a ``n``×``n`` grid (``"grid"``). Most of
them land inside a region another point has already segmented with confidence:
their candidates are near-copies that box NMS removes. The ``"coarse-to-fine"``
schedule decodes the grid in levels — every 4th row and column first, then every
2nd, then the rest — and skips a point of a later level when it lies inside a
mask already kept with high confidence (:func:`covered_points`). The set of grid
points is the same; only the skipped points' (duplicate) candidates are missing.

Pure numpy/opencv on plain arrays.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Prompt schedules the generator knows.
PROMPT_SCHEDULES = ("grid", "coarse-to-fine")
#: Level strides of the coarse-to-fine schedule: a point (row i, column j of the grid) belongs to the
#: first level whose stride divides both i and j (32×32 grid: 64, then 192, then 768 points).
COARSE_TO_FINE_STRIDES = (4, 2, 1)
#: Default predicted IoU a kept mask needs before the points inside it are skipped: above the generator's
#: 0.88 filter, so only confident masks silence other prompts (bench/results/prompts.md measures it).
DEFAULT_SKIP_IOU = 0.92


def schedule_levels(n_per_side: int, schedule: str) -> list[np.ndarray]:
    """Indices into :func:`eac.kernels.masks.point_grid` (row-major) to decode, level by level.

    Parameters
    ----------
    n_per_side : int
        Grid side.
    schedule : {"grid", "coarse-to-fine"}

    Returns
    -------
    list of ndarray of int64
        One array per level; together they hold every index ``0 … n²−1`` exactly once.
        ``"grid"`` has a single level in grid order.
    """
    if schedule not in PROMPT_SCHEDULES:
        raise ValueError(f"unknown prompt schedule {schedule!r}; choose one of {', '.join(PROMPT_SCHEDULES)}")
    total = n_per_side * n_per_side
    if schedule == "grid":
        return [np.arange(total, dtype=np.int64)]
    rows, cols = np.divmod(np.arange(total, dtype=np.int64), n_per_side)
    level = np.full(total, len(COARSE_TO_FINE_STRIDES) - 1)
    for k in reversed(range(len(COARSE_TO_FINE_STRIDES))):
        stride = COARSE_TO_FINE_STRIDES[k]
        level[(rows % stride == 0) & (cols % stride == 0)] = k
    return [np.flatnonzero(level == k) for k in range(len(COARSE_TO_FINE_STRIDES)) if np.any(level == k)]


def covered_map(masks: np.ndarray, hw: tuple[int, int], erosion: int) -> np.ndarray:
    """Union of masks shrunk by ``erosion`` pixels (a point on a mask's edge stays uncovered).

    Parameters
    ----------
    masks : ndarray of bool, N×h×w
    hw : (int, int)
        Frame size (used when N = 0).
    erosion : int
        Pixels removed from each mask's border (square structuring element).

    Returns
    -------
    ndarray of bool, h×w
    """
    if len(masks) == 0:
        return np.zeros(hw, bool)
    union = np.zeros(hw, bool)
    kernel = np.ones((2 * erosion + 1, 2 * erosion + 1), np.uint8) if erosion > 0 else None
    for mask in masks:
        if kernel is None:
            union |= mask
        else:
            union |= cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
    return union


def covered_points(covered: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Which points lie on a covered pixel.

    Parameters
    ----------
    covered : ndarray of bool, h×w
    points : ndarray, K×2
        (x, y) in pixels of the same frame (pixel j spans [j, j+1)).

    Returns
    -------
    ndarray of bool, K
    """
    h, w = covered.shape
    cols = np.clip(np.floor(points[:, 0]).astype(np.int64), 0, w - 1)
    rows = np.clip(np.floor(points[:, 1]).astype(np.int64), 0, h - 1)
    return covered[rows, cols]


__all__ = ["COARSE_TO_FINE_STRIDES", "DEFAULT_SKIP_IOU", "PROMPT_SCHEDULES", "covered_map", "covered_points",
           "schedule_levels"]
