"""The explain bench's int8 option: the classifier quantised on the image's own masked batches.

``eac bench explain --int8`` quantises the benchmarked classifier folder with
:func:`eac.export.quantize.quantize_classifier`, calibrated on :data:`CALIBRATION_IMAGES` masked
images of the very image and concepts being explained (random coalitions, as the evaluations
are), then times the engine on the int8 copy beside the fp32 one and reports how far its
explanation is from the fp32 explanation: Spearman correlation of the values, top-1 and top-k
agreement, largest value difference, the explained class. The quantisation itself is timed
separately (it is a one-off per model when a calibration set is used, per image when the
image's own batches are).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..export.quantize import explanation_agreement

#: Masked images the activation ranges are measured on (random coalitions of the image's concepts).
CALIBRATION_IMAGES = 64


def int8_copy(folder: Path, classifier: Any, crop: np.ndarray, masks: np.ndarray, seed: int,
              workdir: str | None = None) -> tuple[Path, float]:
    """Quantise ``folder`` on the image's masked batches into a fresh folder; returns it and the seconds taken."""
    from ..export.quantize import CALIBRATION_KEEP, masked_calibration, quantize_classifier

    start = time.perf_counter()
    calibration = masked_calibration(classifier, crop, masks, CALIBRATION_IMAGES, seed)
    out = Path(tempfile.mkdtemp(prefix="eac-int8-", dir=workdir)) / "classifier"
    quantize_classifier(folder, out, calibration,
                        calibration_source=f"{CALIBRATION_IMAGES} masked images of the explained image "
                                           f"(concepts kept with p={CALIBRATION_KEEP}, seed {seed})")
    return out, time.perf_counter() - start


def int8_agreement(fp32: Any, int8: Any) -> dict[str, float]:
    """:func:`eac.export.quantize.explanation_agreement` plus the evaluations each explanation used."""
    out = explanation_agreement(fp32, int8)
    out["evaluations_fp32"] = float(fp32.num_evaluations)
    out["evaluations_int8"] = float(int8.num_evaluations)
    return out


def agreement_rows(agree: dict[str, float]) -> list[list[str]]:
    """The printed agreement table's row of the int8 engine against the fp32 engine."""
    return [["engine int8 vs engine fp32", f"{agree['spearman']:.3f}", f"{agree['top1']:.0f}",
             f"{agree['top3']:.2f}", f"{agree['top5']:.2f}",
             f"{agree['max_abs_value_difference']:.4f} (of {agree['value_scale']:.4f})",
             f"{agree['probability_difference']:.4f}",
             f"{agree['evaluations_int8']:.0f} / {agree['evaluations_fp32']:.0f}"]]


AGREEMENT_HEADER = ["pair", "Spearman", "top-1 same", "top-3 overlap", "top-5 overlap",
                    "max |Δ value| (largest |value|)", "|Δ probability| of the class", "evaluations int8 / fp32"]
