"""Masked batch composition: coalitions of concepts → the classifier's input batch.

A coalition is a boolean vector over N concepts. Its masked image keeps the pixels
in the union of the chosen concept masks and replaces every other pixel by a
baseline. The kernels here write that image straight into the classifier's
*normalised* input layout (B×3×h×w ``float32``), so no uint8 copy of the batch is
ever made, and they work chunk by chunk so peak memory depends on the chunk
(batch) size only, never on how many coalitions are evaluated in total.

The union of a coalition's masks is one matrix product: with the masks flattened
to an N×P ``float32`` matrix (P = h·w pixels), ``(coalitions @ masks) > 0`` is the
B×P keep-map of B coalitions at once.

Baselines (what a pixel outside the coalition becomes):

``"black"``
    A 0 pixel before normalisation (the reference method).
``"mean"``
    The image's mean colour.
``"blur"``
    A Gaussian-blurred copy of the image.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

BASELINES = ("black", "mean", "blur")
#: Gaussian sigma of the ``"blur"`` baseline, as a fraction of the image's shorter side.
BLUR_SIGMA_FRACTION = 0.05


def baseline_pixels(image: np.ndarray, kind: str = "black") -> np.ndarray:
    """The baseline image in pixel space (0-255), same layout as ``image``.

    Parameters
    ----------
    image : ndarray, h×w×3
        The crop, ``uint8`` or float on the 0-255 scale.
    kind : {"black", "mean", "blur"}
        Which baseline.

    Returns
    -------
    ndarray of float32, h×w×3
    """
    image = np.asarray(image, dtype=np.float32)
    if kind == "black":
        return np.zeros_like(image)
    if kind == "mean":
        return np.broadcast_to(image.reshape(-1, image.shape[-1]).mean(axis=0), image.shape).astype(np.float32)
    if kind == "blur":
        sigma = max(1.0, BLUR_SIGMA_FRACTION * min(image.shape[:2]))
        return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")


def flatten_masks(masks: np.ndarray) -> np.ndarray:
    """N×h×w boolean masks → N×P ``float32`` matrix (P = h·w) used by :func:`compose_batch`."""
    masks = np.asarray(masks)
    return np.ascontiguousarray(masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:]))), dtype=np.float32)


def union_keep(coalitions: np.ndarray, masks_flat: np.ndarray, invert: bool = False) -> np.ndarray:
    """Keep-map of each coalition: pixels in the union of its masks.

    Parameters
    ----------
    coalitions : ndarray, B×N
        Boolean (or 0/1) coalition matrix.
    masks_flat : ndarray of float32, N×P
        From :func:`flatten_masks`.
    invert : bool
        Return the complement (pixels in *none* of the chosen masks), as used by
        deletion curves and leave-one-out.

    Returns
    -------
    ndarray of bool, B×P
    """
    coalitions = np.asarray(coalitions, dtype=np.float32)
    if coalitions.shape[1] == 0:
        keep = np.zeros((coalitions.shape[0], masks_flat.shape[1]), dtype=bool)
    else:
        keep = (coalitions @ masks_flat) > 0.5
    return ~keep if invert else keep


#: Rows of a composition scratch buffer: keep weights, drop weights, one channel's products.
SCRATCH_ROWS = 3


def compose_scratch(batch: int, pixels: int) -> np.ndarray:
    """Scratch memory :func:`compose_batch` reuses across calls: 3×``batch``×``pixels`` float32."""
    return np.empty((SCRATCH_ROWS, batch, pixels), dtype=np.float32)


def compose_batch(
    image_norm: np.ndarray,
    baseline_norm: np.ndarray,
    masks_flat: np.ndarray,
    coalitions: np.ndarray,
    out: np.ndarray | None = None,
    invert: bool = False,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """Write the masked images of B coalitions into a normalised input batch.

    Parameters
    ----------
    image_norm : ndarray of float32, C×h×w
        The crop, already normalised as the classifier expects.
    baseline_norm : ndarray of float32, C×h×w
        The baseline, normalised the same way.
    masks_flat : ndarray of float32, N×P
        Concept masks from :func:`flatten_masks` (P = h·w).
    coalitions : ndarray, B×N
        Which concepts each image keeps.
    out : ndarray of float32, B'×C×h×w with B' ≥ B, optional
        Buffer to write into (reused across chunks); a new array when omitted.
    invert : bool
        Keep the pixels *outside* the union instead (deletion / leave-one-out).
    scratch : ndarray of float32, 3×B'×P with B' ≥ B, optional
        Working memory from :func:`compose_scratch` (reused across chunks); allocated when omitted.

    Returns
    -------
    ndarray of float32, B×C×h×w
        ``out[:B]``: pixel p of image b is ``image_norm`` where coalition b keeps p,
        ``baseline_norm`` elsewhere — bit for bit: with keep weights k ∈ {0, 1}, each pixel is
        ``k·image + (1 − k)·baseline``, one product the pixel itself and the other ±0.
        (Three streaming passes per channel; a masked copy (``np.copyto(where=)``) costs about
        twice the CPU time.)
    """
    c, h, w = image_norm.shape
    coalitions = np.asarray(coalitions)
    b = coalitions.shape[0]
    p = h * w
    if out is None:
        out = np.empty((b, c, h, w), dtype=np.float32)
    elif out.shape[0] < b or out.shape[1:] != (c, h, w) or out.dtype != np.float32:
        raise ValueError(f"out buffer {out.shape} {out.dtype} cannot hold a {b}×{c}×{h}×{w} float32 batch")
    if scratch is None:
        scratch = compose_scratch(b, p)
    elif scratch.shape[0] != SCRATCH_ROWS or scratch.shape[1] < b or scratch.shape[2] != p \
            or scratch.dtype != np.float32:
        raise ValueError(f"scratch {scratch.shape} {scratch.dtype} cannot serve a {b}×{p} batch")
    keep, drop, product = scratch[0, :b], scratch[1, :b], scratch[2, :b]
    if coalitions.shape[1] == 0:
        keep.fill(0.0)
    else:
        np.matmul(np.asarray(coalitions, dtype=np.float32), masks_flat, out=keep)  # masks covering each pixel
        np.minimum(keep, 1.0, out=keep)
    np.subtract(1.0, keep, out=drop)
    if invert:
        keep, drop = drop, keep
    img = image_norm.reshape(c, p)
    base = baseline_norm.reshape(c, p)
    view = out[:b].reshape(b, c, p)
    for ch in range(c):
        np.multiply(keep, img[ch], out=view[:, ch])
        np.multiply(drop, base[ch], out=product)
        view[:, ch] += product
    return out[:b]


def compose_chunks(
    image_norm: np.ndarray,
    baseline_norm: np.ndarray,
    masks_flat: np.ndarray,
    coalitions: np.ndarray,
    chunk_size: int,
    invert: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, batch)`` for consecutive chunks of ``coalitions``.

    One buffer of ``chunk_size``×C×h×w (and a 3×``chunk_size``×h×w scratch) is
    allocated and reused, so peak memory is independent of the number of
    coalitions M. The yielded batch is a view of that buffer: consume it before
    asking for the next chunk.

    Parameters
    ----------
    image_norm, baseline_norm : ndarray of float32, C×h×w
    masks_flat : ndarray of float32, N×P
    coalitions : ndarray, M×N
    chunk_size : int
        Rows per chunk (the classifier batch size).
    invert : bool
        See :func:`compose_batch`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    coalitions = np.asarray(coalitions)
    m = coalitions.shape[0]
    rows = min(chunk_size, max(m, 1))
    buffer = np.empty((rows, *image_norm.shape), dtype=np.float32)
    scratch = compose_scratch(rows, int(np.prod(image_norm.shape[1:])))
    for start in range(0, m, chunk_size):
        part = coalitions[start : start + chunk_size]
        yield start, compose_batch(image_norm, baseline_norm, masks_flat, part, out=buffer, invert=invert,
                                   scratch=scratch)
