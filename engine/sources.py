"""Concept sources that need no SAM model: user masks, label images, superpixels, grids.

Every source is a callable ``source(crop, frame) -> Concepts`` where ``crop`` is
the H×W×3 ``uint8`` image of the frame the explanation lives in and ``frame``
says where it sits in the original image. The SAM generator
(:class:`eac.engine.sam.SamConceptGenerator`) has the same call, so the
explainer does not care where concepts came from.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ..kernels.superpixels import grid_labels, labels_to_masks, slic
from .concepts import Concepts, Frame
from .errors import ConceptError

ConceptSource = Callable[[np.ndarray, Frame], Concepts]

#: Default number of superpixels / grid cells (the reference's typical SAM concept count).
DEFAULT_SEGMENTS = 32
DEFAULT_COMPACTNESS = 10.0


class SuperpixelSource:
    """SLIC superpixels of the crop as concepts (the baseline the EAC paper argues against).

    Parameters
    ----------
    n_segments : int
        Approximate number of superpixels.
    compactness : float
        SLIC's balance of colour against position.
    """

    name = "slic"

    def __init__(self, n_segments: int = DEFAULT_SEGMENTS, compactness: float = DEFAULT_COMPACTNESS):
        if n_segments < 1:
            raise ConceptError(f"n_segments must be at least 1, got {n_segments}")
        self.n_segments = int(n_segments)
        self.compactness = float(compactness)

    def __call__(self, crop: np.ndarray, frame: Frame) -> Concepts:
        start = time.perf_counter()
        labels = slic(crop, self.n_segments, self.compactness)
        masks, _ = labels_to_masks(labels)
        return Concepts(masks, None, self.name, frame, timings={"superpixels": time.perf_counter() - start},
                        info={"n_segments": self.n_segments, "compactness": self.compactness})


class GridSource:
    """A regular grid of about ``n_segments`` rectangular cells."""

    name = "grid"

    def __init__(self, n_segments: int = DEFAULT_SEGMENTS):
        if n_segments < 1:
            raise ConceptError(f"n_segments must be at least 1, got {n_segments}")
        self.n_segments = int(n_segments)

    def __call__(self, crop: np.ndarray, frame: Frame) -> Concepts:
        masks, _ = labels_to_masks(grid_labels(crop.shape[:2], self.n_segments))
        return Concepts(masks, None, self.name, frame, info={"n_segments": self.n_segments})


class MaskSource:
    """User-given concepts: an N×H×W boolean array or an H×W label image.

    Masks may be given in the frame itself (H×W equal to the crop) or in the
    original image (then they are resized and cropped like the image, with
    nearest-neighbour interpolation, and ``info["mapped_from"]`` says so). A
    label image turns each distinct label into one concept; ``ignore_label``
    (default 0 for label images) is left out.
    """

    name = "masks"

    def __init__(self, masks: np.ndarray, ignore_label: int | None = 0, origin: str = "array"):
        masks = np.asarray(masks)
        if masks.ndim == 2:
            if not np.issubdtype(masks.dtype, np.integer) and masks.dtype != bool:
                raise ConceptError(f"{origin}: a label image must hold integer labels, got {masks.dtype}")
            masks, _ = labels_to_masks(masks.astype(np.int64), ignore=ignore_label)
        elif masks.ndim == 3:
            if masks.dtype != bool and not np.isin(np.unique(masks), (0, 1)).all():
                raise ConceptError(f"{origin}: N×H×W masks must be boolean or 0/1")
            masks = masks.astype(bool)
        else:
            raise ConceptError(f"{origin}: expected N×H×W masks or an H×W label image, got shape {masks.shape}")
        self.masks = masks
        self.origin = origin

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> MaskSource:
        """Read ``.npy`` (masks or labels), ``.npz`` (key ``masks`` or ``labels``) or a PNG label image."""
        path = Path(path)
        if not path.is_file():
            raise ConceptError(f"{path}: no such masks file")
        suffix = path.suffix.lower()
        try:
            if suffix == ".npy":
                data = np.load(path, allow_pickle=False)
            elif suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    key = "masks" if "masks" in z else "labels" if "labels" in z else None
                    if key is None:
                        raise ConceptError(f"{path}: .npz has no 'masks' or 'labels' array (found {list(z)})")
                    data = z[key]
            else:
                data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                if data is None:
                    raise ConceptError(f"{path}: cannot read as a label image")
                if data.ndim == 3:  # colour-coded labels: one label per distinct colour
                    flat = data.reshape(-1, data.shape[2])
                    _, inverse = np.unique(flat, axis=0, return_inverse=True)
                    data = inverse.reshape(data.shape[:2]) + 1
                    return cls(data, ignore_label=None, origin=str(path))
        except (OSError, ValueError) as exc:
            raise ConceptError(f"{path}: unreadable masks file ({exc})") from exc
        return cls(data, origin=str(path))

    def __call__(self, crop: np.ndarray, frame: Frame) -> Concepts:
        hw = tuple(crop.shape[:2])
        masks = self.masks
        info = {"origin": self.origin}
        if masks.shape[1:] != hw:
            if masks.shape[1:] != tuple(frame.original_hw):
                raise ConceptError(
                    f"{self.origin}: masks are {masks.shape[1]}×{masks.shape[2]}, but the image is "
                    f"{frame.original_hw[0]}×{frame.original_hw[1]} and the classifier's crop {hw[0]}×{hw[1]}; "
                    "give masks in one of those sizes"
                )
            masks = map_to_frame(masks, frame)
            info["mapped_from"] = f"original image {frame.original_hw[0]}×{frame.original_hw[1]} → crop {hw[0]}×{hw[1]}"
        return Concepts(masks, None, self.name, frame, info=info)


def map_to_frame(masks: np.ndarray, frame: Frame) -> np.ndarray:
    """Resize and crop N×H0×W0 original-image masks into the frame (N×h×w), nearest neighbour."""
    rh, rw = frame.resized_hw
    top, left, h, w = frame.box
    out = np.empty((masks.shape[0], h, w), bool)
    for i, m in enumerate(masks):
        resized = cv2.resize(m.astype(np.uint8), (rw, rh), interpolation=cv2.INTER_NEAREST)
        out[i] = resized[top : top + h, left : left + w] > 0
    return out


def make_source(kind: str, n_segments: int | None = None) -> ConceptSource:
    """A SAM-free source by name: ``superpixels``/``slic`` or ``grid``."""
    n = DEFAULT_SEGMENTS if n_segments is None else n_segments
    if kind in ("superpixels", "slic"):
        return SuperpixelSource(n)
    if kind == "grid":
        return GridSource(n)
    raise ConceptError(f"unknown concept source {kind!r}; use superpixels, slic or grid (or --sam / --masks)")
