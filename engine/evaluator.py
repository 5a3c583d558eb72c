"""Batched masked evaluation: coalitions of concepts → classifier logits (and features).

:class:`MaskedEvaluator` binds one crop, its N concept masks, a baseline and a
classifier. ``evaluate(coalitions)`` composes the masked images chunk by chunk
straight into the classifier's normalised input layout
(:func:`eac.kernels.compose.compose_chunks`), runs each chunk, and records the
logits of *every* class (so several classes can be explained from one set of
evaluations) and the penultimate features when the model folder has them. Peak
memory is one batch of inputs plus the outputs, whatever the number of
coalitions.

On-device composition
---------------------
On a GPU the cost of a masked batch is the host→device copy of B×3×h×w floats,
not the arithmetic. The composition is therefore also a tiny ONNX graph
(:mod:`eac.export.compose`, shipped as ``engine/data/compose.onnx``):
``keep = min(C @ Mflat, 1)``; ``x = base + keep·(img − base)``. When the
classifier runs on CUDA or TensorRT, :class:`eac.engine.device_compose.DeviceComposer`
runs that graph on the same device and hands its output to the classifier
through I/O binding: the masks, image and baseline are bound once per image and
only the B×N coalition matrix crosses the bus per batch. The numpy path below
is the CPU implementation of exactly that graph (tests check they agree).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kernels.compose import BASELINES, baseline_pixels, compose_chunks, flatten_masks
from .batching import DEFAULT_BATCH_SIZE
from .device_compose import device_composer_for
from .errors import ConceptError, ExplainError, InputShapeError


@dataclass
class Evaluations:
    """Outputs of the classifier on M masked images.

    Attributes
    ----------
    logits : ndarray of float32, M×K
        Logits (log-probabilities for models that output probabilities).
    features : ndarray of float32, M×D, or None
        Penultimate features, when the classifier exposes them.
    """

    logits: np.ndarray
    features: np.ndarray | None = None


class MaskedEvaluator:
    """Evaluate a classifier on coalitions of concepts of one crop.

    Parameters
    ----------
    classifier : Classifier
        The runtime classifier (``input_hw``, ``normalize``, ``run``, ``num_classes``).
    crop : ndarray of uint8, h×w×3
        The image in the classifier's input frame.
    masks : ndarray of bool, N×h×w
        Concept masks in the same frame.
    baseline : {"black", "mean", "blur"}
        What pixels outside a coalition become (reference: black).
    batch_size : int, optional
        Images per classifier run (default :data:`DEFAULT_BATCH_SIZE`).
    progress : bool
        Show a tqdm bar per :meth:`evaluate` call.
    record_features : bool
        Fetch and keep the features when the classifier has them (only methods
        that read them ask; otherwise they are not copied back per batch).
    device_compose : bool, optional
        Compose masked batches on the classifier's device (see the module
        docstring). None (default): when the classifier runs on a GPU. True:
        also on the CPU provider. False: always the numpy path.

    Attributes
    ----------
    num_evaluations : int
        Masked (and full) images run through the classifier so far.
    seconds : float
        Wall time spent in :meth:`evaluate` so far.
    """

    def __init__(
        self,
        classifier: Any,
        crop: np.ndarray,
        masks: np.ndarray,
        baseline: str = "black",
        batch_size: int | None = None,
        progress: bool = False,
        record_features: bool = False,
        device_compose: bool | None = None,
    ) -> None:
        crop = np.asarray(crop)
        masks = np.asarray(masks)
        hw = tuple(int(v) for v in classifier.input_hw)
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[:2] != hw:
            raise InputShapeError(f"crop must be {hw[0]}×{hw[1]}×3 (the classifier's input), got {crop.shape}")
        if masks.ndim != 3 or masks.shape[1:] != hw:
            raise ConceptError(f"concept masks must be N×{hw[0]}×{hw[1]} (the crop's frame), got {masks.shape}")
        if baseline not in BASELINES:
            raise ExplainError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ExplainError(f"batch size must be ≥ 1, got {batch_size}")
        self.classifier = classifier
        self.crop = crop
        self.masks = masks.astype(bool)
        self.baseline = baseline
        self.batch_size = batch_size
        self.progress = progress
        self.record_features = record_features and bool(getattr(classifier, "has_features", False))
        pair = np.stack([crop.astype(np.float32), baseline_pixels(crop, baseline)])
        normed = np.asarray(classifier.normalize(pair), dtype=np.float32)
        self.image_norm = np.ascontiguousarray(normed[0])
        self.baseline_norm = np.ascontiguousarray(normed[1])
        self.masks_flat = flatten_masks(self.masks)
        self._composer = None
        if device_compose is not False and self.num_concepts > 0:
            self._composer = device_composer_for(classifier, self.image_norm, self.baseline_norm, self.masks_flat,
                                                 self.record_features, force=bool(device_compose))
        self.num_evaluations = 0
        self.seconds = 0.0

    @property
    def num_concepts(self) -> int:
        return int(self.masks.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.classifier.num_classes)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.classifier.run(batch, features=self.record_features)
        feats = out.features if self.record_features else None
        return np.asarray(out.logits, dtype=np.float32), None if feats is None else np.asarray(feats, np.float32)

    @property
    def on_device(self) -> bool:
        """Whether masked batches are composed on the classifier's device."""
        return self._composer is not None

    def _batches(self, coalitions: np.ndarray, invert: bool):
        """Yield (start, logits, features) per batch of coalitions."""
        if self._composer is not None:
            for start in range(0, coalitions.shape[0], self.batch_size):
                lg, ft = self._composer.run(coalitions[start : start + self.batch_size], invert=invert)
                yield start, lg, (ft if self.record_features else None)
            return
        chunks = compose_chunks(self.image_norm, self.baseline_norm, self.masks_flat, coalitions,
                                self.batch_size, invert=invert)
        for start, batch in chunks:
            lg, ft = self._run(batch)
            yield start, lg, ft

    def evaluate(self, coalitions: np.ndarray, invert: bool = False, desc: str | None = None) -> Evaluations:
        """Run the classifier on the masked image of each coalition.

        Parameters
        ----------
        coalitions : ndarray, M×N
            Boolean (or 0/1) coalition matrix.
        invert : bool
            Keep the pixels *outside* the union of the chosen masks instead
            (deletion curves, leave-one-out).
        desc : str, optional
            Progress-bar label.

        Returns
        -------
        Evaluations
            logits M×K and features M×D (or None).
        """
        coalitions = np.asarray(coalitions)
        if coalitions.ndim != 2 or coalitions.shape[1] != self.num_concepts:
            raise InputShapeError(f"coalitions must be M×{self.num_concepts}, got shape {coalitions.shape}")
        m = coalitions.shape[0]
        start_time = time.perf_counter()
        logits = np.empty((m, self.num_classes), dtype=np.float32)
        features: np.ndarray | None = None
        bar = None
        if self.progress and m:
            from tqdm import tqdm

            bar = tqdm(total=m, desc=desc or "evaluations", unit="img", leave=False)
        for start, lg, ft in self._batches(coalitions, invert):
            logits[start : start + len(lg)] = lg
            if ft is not None:
                if features is None:
                    features = np.empty((m, ft.shape[1]), dtype=np.float32)
                features[start : start + len(ft)] = ft
            if bar is not None:
                bar.update(len(lg))
        if bar is not None:
            bar.close()
        self.num_evaluations += m
        self.seconds += time.perf_counter() - start_time
        return Evaluations(logits, features)

    def evaluate_full(self) -> Evaluations:
        """The classifier on the unmasked crop (one row)."""
        start_time = time.perf_counter()
        lg, ft = self._run(self.image_norm[None])
        self.num_evaluations += 1
        self.seconds += time.perf_counter() - start_time
        return Evaluations(lg, ft)
