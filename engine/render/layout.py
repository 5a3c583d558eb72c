"""Sizes of pictures: the image shown large whatever its size, panels in a bounded grid.

Every picture eac writes is at most :data:`MAX_WIDTH` pixels wide and at most
:data:`MAX_ASPECT` times as wide as it is tall, or as tall as it is wide: a
tiny 32×32 crop is shown as large as a 224×224 one, a 4000-pixel photograph is
shrunk, and an explanation of several classes gets one panel per class.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Longer side of the image in a panel, in pixels (the crop is scaled to it, up or down).
IMAGE_SIDE = 640
#: Bounds of every picture: width in pixels, and the ratio of its longer to its shorter side.
MAX_WIDTH = 1600
MAX_ASPECT = 2.0
#: White margin around a panel's parts, in pixels.
MARGIN = 12
BACKGROUND = 255


def display_size(hw: tuple[int, int], side: int = IMAGE_SIDE) -> tuple[int, int]:
    """(height, width) of an h×w image scaled so its longer side is ``side`` (each at least 1)."""
    h, w = max(1, int(hw[0])), max(1, int(hw[1]))
    factor = side / max(h, w)
    return max(1, round(h * factor)), max(1, round(w * factor))


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """An image resized to ``hw``: nearest neighbour when enlarging (pixels stay sharp), area when shrinking."""
    h, w = image.shape[:2]
    if (h, w) == tuple(hw):
        return np.ascontiguousarray(image)
    shrink = hw[0] < h or hw[1] < w
    return cv2.resize(np.ascontiguousarray(image), (hw[1], hw[0]),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)


def resize_nearest(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a mask or label image of any dtype (each output pixel samples one input pixel).

    Parameters
    ----------
    array : ndarray, h×w (or N×h×w: every mask alike)
    hw : tuple of int

    Returns
    -------
    ndarray, H×W (or N×H×W), same dtype
    """
    h, w = array.shape[-2:]
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(np.int64), w - 1)
    return array[..., rows[:, None], cols[None, :]]


def blank(height: int, width: int) -> np.ndarray:
    """A white BGR canvas."""
    return np.full((max(1, height), max(1, width), 3), BACKGROUND, dtype=np.uint8)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two BGR pictures next to each other, top-aligned, with margins, on white."""
    height = max(left.shape[0], right.shape[0]) + 2 * MARGIN
    canvas = blank(height, left.shape[1] + right.shape[1] + 3 * MARGIN)
    canvas[MARGIN : MARGIN + left.shape[0], MARGIN : MARGIN + left.shape[1]] = left
    x = 2 * MARGIN + left.shape[1]
    canvas[MARGIN : MARGIN + right.shape[0], x : x + right.shape[1]] = right
    return canvas


def grid_columns(count: int, panel_hw: tuple[int, int]) -> int:
    """Columns for ``count`` panels of one size: the fewest whose grid is no taller than :data:`MAX_ASPECT` × wide."""
    h, w = panel_hw
    for columns in range(1, count + 1):
        rows = math.ceil(count / columns)
        if rows * h <= MAX_ASPECT * columns * w:
            return columns
    return count


def compose(panels: list[np.ndarray]) -> np.ndarray:
    """Panels (BGR, any sizes) in a grid, then :func:`bound`: one picture within the size limits.

    Parameters
    ----------
    panels : list of ndarray of uint8, h×w×3
        At least one.

    Returns
    -------
    ndarray of uint8, H×W×3
        At most :data:`MAX_WIDTH` wide, with aspect at most :data:`MAX_ASPECT` either way.
    """
    cell_h = max(p.shape[0] for p in panels)
    cell_w = max(p.shape[1] for p in panels)
    columns = grid_columns(len(panels), (cell_h, cell_w))
    rows = math.ceil(len(panels) / columns)
    canvas = blank(rows * cell_h, columns * cell_w)
    for k, panel in enumerate(panels):
        r, c = divmod(k, columns)
        canvas[r * cell_h : r * cell_h + panel.shape[0], c * cell_w : c * cell_w + panel.shape[1]] = panel
    return bound(canvas)


def bound(picture: np.ndarray) -> np.ndarray:
    """A picture within the limits: shrunk to at most :data:`MAX_WIDTH` wide (and :data:`MAX_ASPECT` ×
    that tall), then padded with white until neither side exceeds :data:`MAX_ASPECT` × the other."""
    h, w = picture.shape[:2]
    factor = min(1.0, MAX_WIDTH / w, MAX_ASPECT * MAX_WIDTH / h)
    if factor < 1.0:
        h, w = max(1, math.floor(h * factor)), max(1, math.floor(w * factor))
        picture = cv2.resize(picture, (w, h), interpolation=cv2.INTER_AREA)
    if h > MAX_ASPECT * w:  # too tall: white on the right (at most MAX_WIDTH in all, as h ≤ MAX_ASPECT·MAX_WIDTH)
        picture = np.concatenate([picture, blank(h, math.ceil(h / MAX_ASPECT) - w)], axis=1)
    elif w > MAX_ASPECT * h:  # too wide: white below
        picture = np.concatenate([picture, blank(math.ceil(w / MAX_ASPECT) - h, w)], axis=0)
    return picture
