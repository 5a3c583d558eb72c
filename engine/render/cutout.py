"""Cut-outs: one concept alone, transparent around it, large enough to see."""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Cut-outs are scaled up (nearest neighbour, whole factor) to at least this many pixels on their longer side.
MIN_CUTOUT_SIDE = 128


def cutout(crop: np.ndarray, mask: np.ndarray, min_side: int = MIN_CUTOUT_SIDE) -> np.ndarray:
    """BGRA cut-out of one concept: its bounding box, transparent outside the mask, scaled up.

    Parameters
    ----------
    crop : ndarray of uint8, h×w×3 (RGB)
    mask : ndarray of bool, h×w
    min_side : int
        The cut-out is enlarged by a whole factor (nearest neighbour, so pixels
        stay square and the mask stays exact) until its longer side is at least
        this long.

    Returns
    -------
    ndarray of uint8, H×W×4
        1×1 and fully transparent for an empty mask.
    """
    bgra = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGRA)
    bgra[:, :, 3] = np.where(mask, 255, 0).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return bgra[:1, :1] * 0
    box = np.ascontiguousarray(bgra[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    factor = max(1, math.ceil(min_side / max(box.shape[:2])))
    if factor == 1:
        return box
    return cv2.resize(box, (box.shape[1] * factor, box.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
