"""Masked evaluation with the composition on the classifier's device.

:class:`DeviceComposer` runs the shipped composition graph
(``data/compose.onnx``, built by :mod:`eac.export.compose`) in an ONNX Runtime
session on the same provider as the classifier, and hands its output to the
classifier through I/O binding without a copy to the host. The concept masks,
the image and the baseline are bound once per image; per batch only the B×N
coalition matrix goes to the device and only the B×K logits (and B×D features)
come back. On a GPU that removes the B×3×h×w host→device copy per batch; on the
CPU provider the same code runs (device ``"cpu"``), which is how it is tested
against the numpy composition.

Use it for classifiers with a dynamic batch, NCHW float32 input — anything else
makes :func:`device_composer_for` return None and the numpy path is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .manifest import COMPOSE
from .session import GPU_PROVIDERS, active_provider

COMPOSE_PATH = Path(__file__).resolve().parent / "data" / COMPOSE.filename


def supports_device_compose(classifier: Any) -> bool:
    """Whether ``classifier`` can take a composed batch straight from the device."""
    return bool(getattr(classifier, "supports_device_compose", False))


def device_composer_for(classifier: Any, image_norm: np.ndarray, baseline_norm: np.ndarray,
                        masks_flat: np.ndarray, record_features: bool = True,
                        force: bool = False) -> DeviceComposer | None:
    """A :class:`DeviceComposer` when the classifier runs on a GPU (or ``force``), else None."""
    if not supports_device_compose(classifier):
        return None
    if not force and active_provider(classifier.session) not in GPU_PROVIDERS:
        return None
    return DeviceComposer(classifier, image_norm, baseline_norm, masks_flat, record_features)


class DeviceComposer:
    """Compose masked batches on the classifier's device and classify them there.

    Parameters
    ----------
    classifier : eac.engine.classifier.Classifier
        A classifier with a dynamic batch axis and an NCHW float32 input; its
        runtime runs the composition graph (one cached session per classifier).
    image_norm, baseline_norm : ndarray of float32, 3×h×w
        The crop and the baseline, normalised as the classifier expects.
    masks_flat : ndarray, N×P
        Concept masks flattened (P = h·w), 0/1.
    record_features : bool
        Also return the features output when the classifier has one.
    """

    def __init__(self, classifier: Any, image_norm: np.ndarray, baseline_norm: np.ndarray,
                 masks_flat: np.ndarray, record_features: bool = True):
        self.classifier = classifier
        self.compose = classifier.compose_session()
        self.device = classifier.runtime.device_of(classifier.session)
        self.device_id = classifier.runtime.device_id

        def value(a: np.ndarray) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(a, dtype=np.float32).copy(), self.device, self.device_id)

        self._masks = value(masks_flat)
        self._image = value(np.asarray(image_norm)[None])
        self._baseline = value(np.asarray(baseline_norm)[None])
        self._invert = {flag: value(np.array([float(flag)])) for flag in (False, True)}
        self.input_name = classifier.input_name
        self.output_names = classifier.output_names(features=record_features)

    def run(self, coalitions: np.ndarray, invert: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits B×K (and features B×D or None) of the masked images of B coalitions."""
        coalitions = np.ascontiguousarray(coalitions, dtype=np.float32)
        compose = self.compose.io_binding()
        compose.bind_ortvalue_input(COMPOSE.coalitions,
                                    ort.OrtValue.ortvalue_from_numpy(coalitions, self.device, self.device_id))
        compose.bind_ortvalue_input(COMPOSE.concept_masks, self._masks)
        compose.bind_ortvalue_input(COMPOSE.image, self._image)
        compose.bind_ortvalue_input(COMPOSE.baseline, self._baseline)
        compose.bind_ortvalue_input(COMPOSE.invert, self._invert[bool(invert)])
        compose.bind_output(COMPOSE.output, self.device, self.device_id)
        self.compose.run_with_iobinding(compose)
        batch = compose.get_outputs()[0]  # stays on the device

        classify = self.classifier.session.io_binding()
        classify.bind_ortvalue_input(self.input_name, batch)
        for name in self.output_names:
            classify.bind_output(name, "cpu")
        self.classifier.session.run_with_iobinding(classify)
        outs = [np.array(v.numpy(), copy=True) for v in classify.get_outputs()]
        logits = self.classifier.scores_from_output(outs[0])
        return logits, (outs[1] if len(outs) > 1 else None)
