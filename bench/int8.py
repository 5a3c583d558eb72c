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

from .agreement import TOP_K, ranking_agreement

#: Masked images the activation ranges are measured on (random coalitions of the image's concepts).
CALIBRATION_IMAGES = 64
#: Each concept is kept with this probability in a calibration image (the evaluations' own rate).
CALIBRATION_KEEP = 0.5
#: Top-k overlaps reported besides :data:`eac.bench.agreement.TOP_K`.
WIDE_TOP_K = 5


def masked_calibration(classifier: Any, crop: np.ndarray, masks: np.ndarray, count: int,
                       seed: int) -> np.ndarray:
    """``count`` normalised masked images (count×3×h×w float32) of ``crop`` with random concept coalitions.

    The first image is the whole crop; the rest keep each concept with probability
    :data:`CALIBRATION_KEEP` and black out the others, composed exactly as the evaluations are.
    """
    from ..engine.evaluator import MaskedEvaluator
    from ..kernels.compose import compose_chunks

    evaluator = MaskedEvaluator(classifier, crop, masks, baseline="black", device_compose=False)
    rng = np.random.default_rng(seed)
    coalitions = rng.random((count, len(masks))) < CALIBRATION_KEEP
    coalitions[0] = True
    out = np.empty((count, *evaluator.image_norm.shape), np.float32)
    for start, batch in compose_chunks(evaluator.image_norm, evaluator.baseline_norm, evaluator.masks_flat,
                                       coalitions, count):
        out[start : start + len(batch)] = batch
    return out


def int8_copy(folder: Path, classifier: Any, crop: np.ndarray, masks: np.ndarray, seed: int,
              workdir: str | None = None) -> tuple[Path, float]:
    """Quantise ``folder`` on the image's masked batches into a fresh folder; returns it and the seconds taken."""
    from ..export.quantize import quantize_classifier

    start = time.perf_counter()
    calibration = masked_calibration(classifier, crop, masks, CALIBRATION_IMAGES, seed)
    out = Path(tempfile.mkdtemp(prefix="eac-int8-", dir=workdir)) / "classifier"
    quantize_classifier(folder, out, calibration,
                        calibration_source=f"{CALIBRATION_IMAGES} masked images of the explained image "
                                           f"(concepts kept with p={CALIBRATION_KEEP}, seed {seed})")
    return out, time.perf_counter() - start


def explanation_agreement(fp32: Any, int8: Any) -> dict[str, float]:
    """How far the int8 explanation is from the fp32 one (same image, concepts and seed)."""
    a, b = np.asarray(fp32.values, float), np.asarray(int8.values, float)
    out = ranking_agreement(b, a)
    wide = min(WIDE_TOP_K, len(a))
    top_a, top_b = np.argsort(-a, kind="stable")[:wide], np.argsort(-b, kind="stable")[:wide]
    out[f"top{WIDE_TOP_K}"] = float(len(set(top_a) & set(top_b)) / wide) if wide else float("nan")
    out["max_abs_value_difference"] = float(np.max(np.abs(a - b))) if len(a) else 0.0
    out["value_scale"] = float(np.max(np.abs(a))) if len(a) else 0.0
    out["same_target"] = float(fp32.target == int8.target)
    out["probability_difference"] = float(abs(fp32.probability - int8.probability))
    out["evaluations_fp32"] = float(fp32.num_evaluations)
    out["evaluations_int8"] = float(int8.num_evaluations)
    return out


def agreement_rows(agree: dict[str, float]) -> list[list[str]]:
    """The printed agreement table's row of the int8 engine against the fp32 engine."""
    return [["engine int8 vs engine fp32", f"{agree['spearman']:.3f}", f"{agree['top1']:.0f}",
             f"{agree[f'top{TOP_K}']:.2f}", f"{agree[f'top{WIDE_TOP_K}']:.2f}",
             f"{agree['max_abs_value_difference']:.4f} (of {agree['value_scale']:.4f})",
             f"{agree['probability_difference']:.4f}",
             f"{agree['evaluations_int8']:.0f} / {agree['evaluations_fp32']:.0f}"]]


AGREEMENT_HEADER = ["pair", "Spearman", "top-1 same", f"top-{TOP_K} overlap", f"top-{WIDE_TOP_K} overlap",
                    "max |Δ value| (largest |value|)", "|Δ probability| of the class", "evaluations int8 / fp32"]
