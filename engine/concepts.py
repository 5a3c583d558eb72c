"""The one type every concept source returns.

A concept is a boolean mask over the frame the explanation lives in (normally
the classifier's centre crop, H×W = 224×224). Sources: SAM's automatic mask
generator (:mod:`eac.engine.sam`), user-given masks or label images, and
SAM-free superpixels or grids (:mod:`eac.engine.sources`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import cv2
import numpy as np

from .errors import ConceptError

#: Concepts per image accepted by default (the reference's SAM gives 10–60): the masks
#: (N×H×W bytes) and the evaluations needed grow with N. Raise with ``max_concepts``.
DEFAULT_MAX_CONCEPTS = 256


@dataclass(frozen=True)
class Frame:
    """How a frame (the crop the masks live in) sits in the original image.

    The original image (``original_hw``) was resized to ``resized_hw`` and the
    crop ``box = (top, left, height, width)`` was taken from the resized image.
    The identity frame has ``resized_hw == original_hw`` and a full box.
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    box: tuple[int, int, int, int]

    @classmethod
    def identity(cls, hw: tuple[int, int]) -> Frame:
        h, w = int(hw[0]), int(hw[1])
        return cls((h, w), (h, w), (0, 0, h, w))

    @property
    def hw(self) -> tuple[int, int]:
        """Height and width of the frame itself."""
        return int(self.box[2]), int(self.box[3])

    def to_original(self, masks: np.ndarray) -> np.ndarray:
        """Map N×h×w frame masks to N×H×W masks of the original image.

        Pixels of the original image outside the crop are ``False``.
        """
        masks = np.asarray(masks, dtype=bool)
        n = masks.shape[0]
        top, left, h, w = self.box
        rh, rw = self.resized_hw
        canvas = np.zeros((n, rh, rw), dtype=np.uint8)
        canvas[:, top : top + h, left : left + w] = masks
        oh, ow = self.original_hw
        if (rh, rw) == (oh, ow):
            return canvas.astype(bool)
        out = np.empty((n, oh, ow), dtype=bool)
        for i in range(n):
            out[i] = cv2.resize(canvas[i], (ow, oh), interpolation=cv2.INTER_NEAREST) > 0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"original_hw": list(self.original_hw), "resized_hw": list(self.resized_hw), "box": list(self.box)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Frame:
        return cls(tuple(data["original_hw"]), tuple(data["resized_hw"]), tuple(data["box"]))


@dataclass
class Concepts:
    """N concepts over one frame.

    Attributes
    ----------
    masks : ndarray of bool, N×H×W
        One mask per concept, in the frame. Masks may overlap, may be empty and
        need not cover the frame. N = 0 is valid.
    scores : ndarray of float32, N
        The source's confidence per mask (SAM: predicted IoU; others: 1).
    source : str
        Where the concepts came from (``"sam"``, ``"masks"``, ``"slic"``, ...).
    frame : Frame
        How the frame maps to the original image.
    timings : dict of str to float
        Seconds per stage of the source (encoder, decoder, post-processing...).
    info : dict
        Source-specific details worth keeping (settings, provider).
    """

    masks: np.ndarray
    scores: np.ndarray
    source: str
    frame: Frame
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        masks = np.asarray(self.masks)
        if masks.ndim != 3:
            raise ConceptError(f"concept masks must be N×H×W, got shape {masks.shape}")
        if masks.dtype != bool:
            if not np.isin(np.unique(masks), (0, 1)).all():
                raise ConceptError("concept masks must be boolean (or 0/1)")
            masks = masks.astype(bool)
        self.masks = masks
        scores = np.ones(len(masks), np.float32) if self.scores is None else np.asarray(self.scores, np.float32)
        if scores.shape != (len(masks),):
            raise ConceptError(f"{len(masks)} masks but {scores.shape} scores")
        self.scores = scores
        if masks.shape[1:] != self.frame.hw:
            h, w = self.frame.hw
            raise ConceptError(f"concept masks must be N×{h}×{w} (the frame they live in, e.g. the classifier's "
                               f"crop), got {masks.shape}; make them in that frame (classifier.crop(image))")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return self.frame.hw

    def in_original(self) -> np.ndarray:
        """The masks in the original image's frame (N×H0×W0)."""
        return self.frame.to_original(self.masks)

    def areas(self) -> np.ndarray:
        """Pixel count per mask (N,)."""
        return self.masks.sum(axis=(1, 2))

    def save(self, path: str | os.PathLike | BinaryIO) -> None:
        """Write masks, scores, frame and timings to an ``.npz`` file (a path, or a file opened for writing)."""
        import json

        np.savez_compressed(
            path,
            masks=self.masks,
            scores=self.scores,
            source=np.array(self.source),
            frame=np.array(json.dumps(self.frame.to_dict())),
            timings=np.array(json.dumps(self.timings)),
            info=np.array(json.dumps(self.info, default=str)),
        )

    @classmethod
    def load(cls, path: str) -> Concepts:
        """Read a file written by :meth:`save`."""
        import json

        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    masks=data["masks"],
                    scores=data["scores"],
                    source=str(data["source"]),
                    frame=Frame.from_dict(json.loads(str(data["frame"]))),
                    timings=json.loads(str(data["timings"])),
                    info=json.loads(str(data["info"])) if "info" in data else {},
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ConceptError(f"{path}: not a concepts file written by eac ({exc})") from exc
