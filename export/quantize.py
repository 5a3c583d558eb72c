"""An int8 copy of a classifier folder: ONNX Runtime static quantisation, calibrated on given images.

The evaluations are almost all of the explain stage, and on a CPU they run near its fp32 peak.
:func:`quantize_classifier` writes a new classifier folder whose convolutions run in int8
(ONNX Runtime's QDQ format: weights int8 per output channel, activations uint8 with ranges
measured on the calibration images by min/max); everything else — the final layer, so the logits
and the features eac's surrogate reads — stays fp32. The folder's manifest says ``precision:
"int8"`` and records how it was calibrated.

An int8 classifier is an *option*, never a silent default: its explanations differ from the fp32
ones, and how much must be measured (the bench's ``--int8`` row reports rank correlation and
top-k agreement with the fp32 explanation on the same image and concepts).

AVX2 CPUs without VNNI compute ONNX Runtime's u8×s8 products with an instruction whose 16-bit
intermediate sums can saturate; weights are therefore quantised to 7 bits (``reduce_range``,
ONNX Runtime's advice for such machines), as for the int8 SAM decoder (:mod:`eac.export.sam`).

Needs only onnx and onnxruntime (no torch).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .common import StagedFolder, first_line
from .errors import ExportError

#: Operators quantised: the convolutions carry ≥ 95 % of a CNN classifier's multiply-accumulates;
#: the final layer stays fp32 so the logits and features eac reads keep their precision.
QUANTIZED_OPS = ("Conv",)
#: 7-bit weights: avoids u8×s8 saturation on AVX2 CPUs without VNNI (see the module docstring).
REDUCE_RANGE = True
#: Calibration images per ONNX Runtime call while collecting activation ranges.
CALIBRATION_BATCH = 8
#: The precision recorded in the manifest.
PRECISION = "int8"


#: Each concept is kept with this probability in a calibration image (the evaluations' own rate).
CALIBRATION_KEEP = 0.5
#: Masked calibration images per image, concepts per image, and explanations' seed of the CLI.
CALIBRATION_PER_IMAGE = 16
CALIBRATION_CONCEPTS = 32
CHECK_SEED = 0
#: Top-k overlaps of the agreement check.
CHECK_TOP_K = (1, 3, 5)


def masked_calibration(classifier: Any, crop: np.ndarray, masks: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` normalised masked images (count×3×h×w float32) of ``crop`` with random concept coalitions.

    The first image is the whole crop; the others keep each concept (N×h×w ``masks``) with
    probability :data:`CALIBRATION_KEEP` and black out the rest, composed exactly as eac's
    evaluations are (:class:`eac.engine.evaluator.MaskedEvaluator`).
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


def explanation_agreement(fp32: Any, int8: Any) -> dict[str, float]:
    """How far an int8 explanation is from the fp32 one of the same image, concepts and seed.

    Returns Spearman's correlation of the values, the overlap of the top-k concepts for each k of
    :data:`CHECK_TOP_K`, the largest value difference and the largest value, whether the explained
    class is the same, and the difference of its probability.
    """
    from ..engine.metrics import spearman

    a, b = np.asarray(fp32.values, float), np.asarray(int8.values, float)
    out: dict[str, float] = {"spearman": float(spearman(a, b)) if len(a) > 1 else float("nan")}
    for k in CHECK_TOP_K:
        kk = min(k, len(a))
        top_a, top_b = np.argsort(-a, kind="stable")[:kk], np.argsort(-b, kind="stable")[:kk]
        out[f"top{k}"] = float(len(set(top_a) & set(top_b)) / kk) if kk else float("nan")
    out["max_abs_value_difference"] = float(np.max(np.abs(a - b))) if len(a) else 0.0
    out["value_scale"] = float(np.max(np.abs(a))) if len(a) else 0.0
    out["same_target"] = float(fp32.target == int8.target)
    out["probability_difference"] = float(abs(fp32.probability - int8.probability))
    return out


class _Batches:
    """ONNX Runtime's calibration data reader over an M×3×H×W array, a few images per call."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int) -> None:
        self._items = [{input_name: np.ascontiguousarray(images[i : i + batch], np.float32)}
                       for i in range(0, len(images), batch)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._items):
            return None
        self._next += 1
        return self._items[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def quantize_classifier(folder: str | os.PathLike, out: str | os.PathLike, calibration: np.ndarray,
                        calibration_source: str = "given images") -> dict[str, Any]:
    """Write an int8 copy of the classifier folder ``folder`` to ``out``.

    Parameters
    ----------
    folder : path-like
        A classifier folder (``eac export classifier`` / ``eac import-onnx``) with a dynamic batch axis.
    out : path-like
        The new folder (must not exist or be empty); written atomically.
    calibration : ndarray of float32, M×3×H×W
        Normalised network inputs (``Classifier.normalize``) the activation ranges are measured on:
        images like those the classifier will see — for eac, masked images of the concepts.
    calibration_source : str
        How the calibration images were made (recorded in the manifest).

    Returns
    -------
    dict
        The new folder's manifest.

    Raises
    ------
    ExportError
        A folder with a fixed batch axis, an empty calibration set, or a quantisation failure.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..engine.manifest import ClassifierManifest, file_entry, model_path

    src = Path(folder)
    manifest = ClassifierManifest.read(src)
    calibration = np.asarray(calibration, np.float32)
    h, w = manifest.input.hw
    if calibration.ndim != 4 or calibration.shape[1:] != (3, h, w) or len(calibration) == 0:
        raise ExportError(f"calibration images must be M×3×{h}×{w} (M ≥ 1), got {calibration.shape}")
    if manifest.input.batch is not None:
        raise ExportError(f"{src}: the model has a fixed batch size ({manifest.input.batch}); int8 calibration "
                          "needs a dynamic batch axis")
    if manifest.precision != "fp32":
        raise ExportError(f"{src}: the model is already {manifest.precision}; quantise an fp32 folder")
    onnx_in = model_path(src, manifest, "model")
    staged = StagedFolder(out)
    with staged as tmp:
        for entry in manifest.files.values():  # head.npz, labels ... and the fp32 graph, replaced below
            if Path(entry["path"]).name != onnx_in.name:
                shutil.copy2(src / entry["path"], tmp / entry["path"])
        onnx_out = tmp / onnx_in.name
        reader = _Batches(manifest.input.name, calibration, CALIBRATION_BATCH)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs advice about pre-processing
        try:
            quantize_static(str(onnx_in), str(onnx_out), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=REDUCE_RANGE,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as exc:  # the quantiser raises assorted types
            raise ExportError(f"int8 quantisation of {onnx_in} failed ({first_line(exc)})") from exc
        finally:
            logging.getLogger().setLevel(quiet)
        files = {role: (file_entry(tmp, entry["path"]) if role != "model" else file_entry(tmp, onnx_out.name))
                 for role, entry in manifest.files.items() if not role.startswith("model_data")}
        manifest.files = files
        manifest.precision = PRECISION
        manifest.source = {**manifest.source, "quantized_from": str(src.resolve())}
        manifest.validation = {
            **manifest.validation,
            "int8": {"method": "ONNX Runtime static quantisation (QDQ), min/max calibration",
                     "quantized_ops": list(QUANTIZED_OPS), "per_channel": True, "reduce_range": REDUCE_RANGE,
                     "calibration_images": len(calibration), "calibration_source": calibration_source},
        }
        manifest.write(tmp)
        staged.commit()
    return ClassifierManifest.read(staged.out).to_dict()


def quantize_on_images(folder: str | os.PathLike, out: str | os.PathLike, images: list[str | os.PathLike],
                       per_image: int = CALIBRATION_PER_IMAGE, concepts: int = CALIBRATION_CONCEPTS,
                       log=None) -> dict[str, Any]:
    """``eac export int8``: quantise ``folder`` on masked images of ``images`` and check it on held-out ones.

    The images are split: the first ⌈len/2⌉ calibrate (``per_image`` masked images each, over
    ``concepts`` superpixels), the rest are explained with ``eac`` by both the fp32 and the int8
    folder (same concepts, same seed) and the agreement of each pair
    (:func:`explanation_agreement`) and the seconds of each explanation are recorded in the new
    manifest's ``validation.int8.agreement``. A single image calibrates and is checked itself
    (optimistic; the manifest says so).

    Returns
    -------
    dict
        The new folder's manifest.
    """
    import time

    from ..engine.classifier import Classifier
    from ..engine.explainer import explain
    from ..engine.images import load_image
    from ..engine.manifest import ClassifierManifest
    from ..engine.sources import make_source

    if not images:
        raise ExportError("give at least one calibration image")
    fp32 = Classifier.from_folder(folder)
    source = make_source("superpixels", concepts)
    crops = []
    for path in images:
        crop, frame = fp32.crop(load_image(path))
        crops.append((crop, source(crop, frame).masks))
    split = (len(crops) + 1) // 2
    calibrate, check = crops[:split], (crops[split:] or crops[:1])
    if log is not None:
        log(f"calibrating on {per_image} masked images of each of {len(calibrate)} image(s)...")
    calibration = np.concatenate([masked_calibration(fp32, c, m, per_image, i)
                                  for i, (c, m) in enumerate(calibrate)])
    how = (f"{per_image} masked images of each of {len(calibrate)} image(s), {concepts} superpixels, "
           f"kept with p={CALIBRATION_KEEP}")
    quantize_classifier(folder, out, calibration, calibration_source=how)
    int8 = Classifier.from_folder(out)
    rows = []
    for crop, masks in check:
        t0 = time.perf_counter()
        a = explain(crop, fp32, masks, seed=CHECK_SEED)
        t1 = time.perf_counter()
        b = explain(crop, int8, masks, seed=CHECK_SEED)
        t2 = time.perf_counter()
        rows.append({**explanation_agreement(a, b), "seconds_fp32": t1 - t0, "seconds_int8": t2 - t1})
    agreement = {"images": len(rows), "held_out": bool(crops[split:]), "per_image": rows,
                 "min_spearman": float(min(r["spearman"] for r in rows)),
                 "mean_top3": float(np.mean([r["top3"] for r in rows]))}
    m = ClassifierManifest.read(out)
    m.validation = {**m.validation, "int8": {**m.validation.get("int8", {}), "agreement": agreement}}
    m.write(out)
    return m.to_dict()
