"""Superpixels and grids as concept masks, in numpy/opencv only.

:func:`slic` is a compact implementation of SLIC (Achanta et al., 2012):
k-means in CIELAB + image-plane coordinates, each pixel compared only with the
cluster centres of the 3×3 grid cells around its own, followed by a
connectivity pass that merges fragments into a neighbour.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Fragments smaller than this fraction of the mean superpixel area are merged.
MIN_FRAGMENT_FRACTION = 0.25


def slic(image: np.ndarray, n_segments: int = 32, compactness: float = 10.0, iterations: int = 10) -> np.ndarray:
    """SLIC superpixel labels.

    Parameters
    ----------
    image : ndarray of uint8, H×W×3
        RGB image.
    n_segments : int
        Approximate number of superpixels.
    compactness : float
        Weight of spatial distance against colour distance (CIELAB units per grid step).
    iterations : int
        k-means iterations.

    Returns
    -------
    ndarray of int32, H×W
        Labels ``0..L-1``, each label one connected region.

    Examples
    --------
    >>> img = np.zeros((8, 8, 3), np.uint8); img[:, 4:] = 255
    >>> labels = slic(img, n_segments=2)
    >>> len(np.unique(labels)), bool((labels[:, :4] == labels[0, 0]).all())
    (2, True)
    """
    if n_segments < 1:
        raise ValueError(f"n_segments must be at least 1, got {n_segments}")
    h, w = image.shape[:2]
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    # opencv's 8-bit Lab: L in 0..255 for 0..100; rescale to the usual units.
    lab[..., 0] *= 100.0 / 255.0
    lab[..., 1:] -= 128.0
    step = max(1.0, np.sqrt(h * w / n_segments))
    rows, cols = _grid_shape(h, w, n_segments)
    cy = (np.arange(rows) + 0.5) * h / rows
    cx = (np.arange(cols) + 0.5) * w / cols
    gy, gx = np.meshgrid(cy, cx, indexing="ij")
    centres_yx = np.stack([gy.ravel(), gx.ravel()], 1).astype(np.float32)
    iy = np.clip(centres_yx[:, 0].astype(int), 0, h - 1)
    ix = np.clip(centres_yx[:, 1].astype(int), 0, w - 1)
    centres_lab = lab[iy, ix].copy()

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cell_r = np.minimum((yy * rows / h).astype(int), rows - 1)
    cell_c = np.minimum((xx * cols / w).astype(int), cols - 1)
    offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    cand = np.stack([np.clip(cell_r + dr, 0, rows - 1) * cols + np.clip(cell_c + dc, 0, cols - 1)
                     for dr, dc in offsets], -1)  # H×W×9 candidate centre indices
    spatial_weight = (compactness / step) ** 2
    flat_lab = lab.reshape(-1, 3)
    flat_yx = np.stack([yy.ravel(), xx.ravel()], 1)
    labels = cand[..., 4].ravel()
    for _ in range(iterations):
        c = cand.reshape(-1, 9)
        d_col = ((flat_lab[:, None, :] - centres_lab[c]) ** 2).sum(-1)
        d_sp = ((flat_yx[:, None, :] - centres_yx[c]) ** 2).sum(-1)
        labels = c[np.arange(c.shape[0]), np.argmin(d_col + spatial_weight * d_sp, axis=1)]
        counts = np.bincount(labels, minlength=len(centres_yx)).astype(np.float32)
        nonzero = counts > 0
        for k in range(3):
            sums = np.bincount(labels, weights=flat_lab[:, k], minlength=len(centres_yx))
            centres_lab[nonzero, k] = sums[nonzero] / counts[nonzero]
        for k in range(2):
            sums = np.bincount(labels, weights=flat_yx[:, k], minlength=len(centres_yx))
            centres_yx[nonzero, k] = sums[nonzero] / counts[nonzero]
    return enforce_connectivity(labels.reshape(h, w), min_size=int(MIN_FRAGMENT_FRACTION * h * w / n_segments))


def enforce_connectivity(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Split labels into connected regions and merge regions under ``min_size`` pixels.

    A small region joins the neighbouring region it shares the longest border with.

    Parameters
    ----------
    labels : ndarray of int, H×W
    min_size : int

    Returns
    -------
    ndarray of int32, H×W
        Consecutive labels ``0..L-1``.
    """
    h, w = labels.shape
    out = np.full((h, w), -1, np.int32)
    next_label = 0
    for value in np.unique(labels):
        n, comp = cv2.connectedComponents((labels == value).astype(np.uint8), connectivity=4)
        for k in range(1, n):
            out[comp == k] = next_label
            next_label += 1
    sizes = np.bincount(out.ravel(), minlength=next_label)
    kernel = np.ones((3, 3), np.uint8)
    for region in np.argsort(sizes):
        if sizes[region] >= min_size or sizes[region] == 0 or sizes[region] == h * w:
            continue
        mask = out == region
        ring = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask
        neighbours = out[ring]
        if neighbours.size == 0:
            continue
        target = np.bincount(neighbours).argmax()
        out[mask] = target
        sizes[target] += sizes[region]
        sizes[region] = 0
    _, consecutive = np.unique(out, return_inverse=True)
    return consecutive.reshape(h, w).astype(np.int32)


def _grid_shape(h: int, w: int, n_segments: int) -> tuple[int, int]:
    """Rows and columns of a grid of about ``n_segments`` near-square cells."""
    rows = max(1, round(np.sqrt(n_segments * h / w)))
    cols = max(1, round(n_segments / rows))
    return min(rows, h), min(cols, w)


def grid_labels(hw: tuple[int, int], n_segments: int) -> np.ndarray:
    """A regular grid of about ``n_segments`` rectangular cells as H×W int32 labels.

    Examples
    --------
    >>> grid_labels((4, 4), 4)
    array([[0, 0, 1, 1],
           [0, 0, 1, 1],
           [2, 2, 3, 3],
           [2, 2, 3, 3]], dtype=int32)
    """
    h, w = int(hw[0]), int(hw[1])
    rows, cols = _grid_shape(h, w, n_segments)
    r = np.minimum(np.arange(h) * rows // h, rows - 1)
    c = np.minimum(np.arange(w) * cols // w, cols - 1)
    return (r[:, None] * cols + c[None, :]).astype(np.int32)


def labels_to_masks(labels: np.ndarray, ignore: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One boolean mask per distinct label.

    Parameters
    ----------
    labels : ndarray of int, H×W
    ignore : int, optional
        A label that is not a concept (e.g. 0 for "unlabelled").

    Returns
    -------
    masks : ndarray of bool, N×H×W
    values : ndarray, N
        The label of each mask, ascending.
    """
    values = np.unique(labels)
    if ignore is not None:
        values = values[values != ignore]
    masks = labels[None, :, :] == values[:, None, None]
    return masks, values
