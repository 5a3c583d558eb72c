"""The benchmark workloads explain, concepts and fidelity, and the inputs every workload shares.

Each workload builds both sides on the same inputs — the engine through the
runtime (ONNX Runtime via :mod:`eac.engine`), the reference through PyTorch
eager (:mod:`eac.bench.reference`) — times them with
:func:`eac.bench.harness.measure_sides` (sides alternating, load recorded), and
returns a :class:`~eac.bench.harness.BenchReport`. :mod:`eac.bench.registry`
says which function runs which workload (``end-to-end`` lives in
:mod:`eac.bench.end_to_end`, ``peers`` in :mod:`eac.bench.peers`).

``explain``
    One image (resize 256, centre crop 224), N concept masks (default 32,
    exactly N regions from SLIC superpixels), a ResNet-50-sized classifier: the
    bench ResNet-50 with its final layer fitted on generated scenes (``--weights
    scenes``, the default; the image is then a generated scene), with random
    weights (``--weights random``), or a classifier folder. Engine method
    ``eac`` vs the reference; ``--int8`` adds the engine on an int8 copy.
``concepts``
    SAM ViT-B (random weights or a checkpoint) on the same crop, 32×32 point
    grid: the engine's ``SamConceptGenerator`` vs segment-anything's own
    ``SamAutomaticMaskGenerator``; plus an untimed agreement check with the IoU
    stability and NMS filters off, so both keep every candidate (mean best IoU
    of the reference's masks among the engine's).
``fidelity``
    The small trained scene classifier (:mod:`eac.bench.train_demo`), scenes
    with N ≤ 12 concepts: Spearman correlation with the exact Shapley values of
    the classifier, top-1/top-3 agreement, insertion and deletion AUC, for
    ``eac``, ``eac-faithful``, ``kernelshap``, ``lime`` and the reference, with
    the classifier evaluations each used.

``quick=True`` swaps in tiny models and fewer evaluations; such reports are
labelled QUICK wherever they are printed or written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import models
from .agreement import TOP_K, mask_agreement, mask_iou_matrix, ranking_agreement
from .classifiers import ClassifierPair, _read_manifest, classifier_pair, torch_classifier_for_folder
from .harness import (
    DEFAULT_PHOTO,
    LOAD_HEADER,
    BenchError,
    BenchReport,
    RunRecord,
    SideResult,
    machine_info,
    measure_sides,
    ratios,
    side_load,
)
from .options import DEFAULT_N_CONCEPTS, QUICK, SCENE_PHOTO, BenchOptions
from .reference import (
    ReferenceEAC,
    ReferenceSamConcepts,
    ReferenceSettings,
    SamReferenceSettings,
    TorchClassifier,
)
from .scene_model import (
    FIDELITY_BACKGROUND_CELLS,
    FIDELITY_MAX_N,
    FIDELITY_SCENE_SEED,
    FIDELITY_SCENES,
    SceneModel,
    fidelity_scenes,
    trained_scene_model,
)
from .scene_sam_bench import scene_sam_rows

#: Names other modules and tests import from here (they moved to modules of their own).
__all__ = [
    "DEFAULT_N_CONCEPTS", "FIDELITY_BACKGROUND_CELLS", "FIDELITY_MAX_N", "FIDELITY_SCENES", "FIDELITY_SCENE_SEED",
    "QUICK", "TOP_K", "BenchOptions", "ClassifierPair", "SceneModel", "TorchClassifier", "classifier_pair",
    "crop_for", "exact_regions", "fidelity_scenes", "load_photo", "mask_agreement", "mask_iou_matrix",
    "ranking_agreement", "run_concepts", "run_explain", "run_fidelity", "torch_classifier_for_folder",
    "trained_scene_model",
]

#: SLIC compactness of the bench's concept masks.
SLIC_COMPACTNESS = 10.0
#: Engine method of the timing workloads.
ENGINE_METHOD = "eac"
#: Methods compared by the fidelity workload (besides the reference and exact Shapley).
FIDELITY_METHODS = ("eac", "eac-faithful", "kernelshap", "lime")
#: Fidelity table row of uniformly random rankings (insertion/deletion baseline).
RANDOM_ROW = "random ranking"
#: Evaluations the untimed SAM agreement check uses: a 16×16 grid (256 prompts).
AGREEMENT_POINTS_PER_SIDE = 16


# --- inputs --------------------------------------------------------------------------------------


#: Seed and side of the generated scene the workloads explain with ``--photo scene`` (any fixed values).
EXPLAIN_SCENE_SEED = 2023
EXPLAIN_SCENE_SIDE = models.CROP


def load_photo(name: str = DEFAULT_PHOTO) -> np.ndarray:
    """A colour photograph shipped with scikit-image, or ``"scene"``: a generated scene (H×W×3 uint8 RGB)."""
    if name == SCENE_PHOTO:
        from ..engine.scenes import make_scene

        return make_scene(np.random.default_rng(EXPLAIN_SCENE_SEED), EXPLAIN_SCENE_SIDE).image
    try:
        from skimage import data
    except ImportError as exc:
        raise BenchError("the bench photographs come from scikit-image: pip install scikit-image") from exc
    loader = getattr(data, name, None)
    if loader is None:
        raise BenchError(f"skimage.data has no image {name!r} (try astronaut, chelsea, coffee)")
    from ..engine.images import to_rgb_uint8

    image = to_rgb_uint8(np.asarray(loader()), name=f"skimage.data.{name}")
    return image


def crop_for(image: np.ndarray, input_hw: tuple[int, int], resize: int | None) -> np.ndarray:
    """Resize the shorter side to ``resize`` and centre-crop ``input_hw`` (the classifier's view)."""
    from ..engine.images import apply_frame, resize_crop_frame

    crop = (int(input_hw[0]), int(input_hw[1]))
    return apply_frame(image, resize_crop_frame(image.shape[:2], resize, crop))


def exact_regions(image: np.ndarray, n: int, compactness: float = SLIC_COMPACTNESS) -> np.ndarray:
    """Exactly ``n`` disjoint regions covering ``image``, from SLIC superpixels.

    SLIC gives about ``n`` superpixels; the smallest region is then merged
    into the neighbour it shares the longest border with until ``n`` remain,
    or the largest region is cut in two along its longer side (at the median
    pixel) until there are ``n``. Deterministic.

    Parameters
    ----------
    image : ndarray of uint8, H×W×3
    n : int
        Number of regions (1 ≤ n ≤ H·W).

    Returns
    -------
    ndarray of bool, n×H×W
        One mask per region; every pixel belongs to exactly one.
    """
    import cv2

    h, w = image.shape[:2]
    if not 1 <= n <= h * w:
        raise BenchError(f"cannot cut a {h}×{w} image into {n} regions")
    try:
        from skimage.segmentation import slic
    except ImportError as exc:
        raise BenchError("the bench's concept masks use scikit-image's SLIC: pip install scikit-image") from exc
    labels = slic(image, n_segments=n, compactness=compactness, start_label=0)
    _, labels = np.unique(labels, return_inverse=True)
    labels = labels.reshape(h, w).astype(np.int64)
    kernel = np.ones((3, 3), np.uint8)
    count = int(labels.max()) + 1
    while count > n:
        areas = np.bincount(labels.ravel(), minlength=count)
        small = int(np.argmin(areas))
        region = (labels == small).astype(np.uint8)
        ring = cv2.dilate(region, kernel).astype(bool) & (labels != small)
        border = np.bincount(labels[ring], minlength=count)
        border[small] = 0
        target = int(np.argmax(border)) if border.any() else (small + 1) % count
        labels[labels == small] = target
        labels[labels > small] -= 1  # keep labels consecutive
        count -= 1
    while count < n:
        areas = np.bincount(labels.ravel(), minlength=count)
        big = int(np.argmax(areas))
        ys, xs = np.nonzero(labels == big)
        coord = ys if (ys.max() - ys.min()) >= (xs.max() - xs.min()) else xs
        cut = coord > np.median(coord)
        if not cut.any() or cut.all():  # degenerate (all pixels on one line): split by order
            cut = np.arange(len(coord)) >= len(coord) // 2
        labels[ys[cut], xs[cut]] = count
        count += 1
    return labels[None] == np.arange(n)[:, None, None]


# --- models --------------------------------------------------------------------------------------


@dataclass
class SamPair:
    """The same SAM for both sides: an engine folder and the PyTorch model."""

    folder: Path
    torch: Any
    model_type: str
    description: str
    load_seconds: dict[str, float]


def sam_pair(opts: BenchOptions) -> SamPair:
    """Engine SAM folder and PyTorch SAM with the same weights."""
    t0 = time.perf_counter()
    if opts.sam:
        folder = Path(opts.sam)
        manifest = _read_manifest(folder, "sam")
        model_type = str(manifest.get("model_type"))
        ckpt = opts.sam_checkpoint or (manifest.get("source") or {}).get("checkpoint")
        if isinstance(ckpt, dict):
            ckpt = ckpt.get("path")
        if not ckpt or not Path(ckpt).is_file():
            raise BenchError(f"{folder}: the reference needs the PyTorch weights of this SAM; "
                             "pass --sam-checkpoint with the checkpoint it was exported from")
        description = f"SAM folder {folder} ({model_type})"
    else:
        model_type = QUICK.sam_model_type if opts.quick else "vit_b"
        ckpt = opts.sam_checkpoint
        opts.log(f"exporting SAM {model_type} ({'checkpoint' if ckpt else 'random weights'}, cached)...")
        folder = models.export_bench_sam(model_type, checkpoint=ckpt)
        ckpt = ckpt or str(models.sam_checkpoint(model_type))
        description = (f"SAM {model_type}, " + (f"checkpoint {ckpt}" if opts.sam_checkpoint
                                                 else f"random weights (seed {models.BENCH_SEED})"))
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sam = models.build_sam(model_type, checkpoint=ckpt)
    return SamPair(folder, sam, model_type, description,
                   {"export_or_find": export_s, "reference": time.perf_counter() - t0})


# --- sides ---------------------------------------------------------------------------------------


def engine_explain_run(classifier: Any, crop: np.ndarray, masks: np.ndarray, opts: BenchOptions,
                       last: dict[str, Any], key: str) -> Callable[[], RunRecord]:
    """A timed run of the engine's ``eac`` on ``classifier`` (its explanation kept in ``last[key]``)."""
    from ..engine.explainer import explain

    def run() -> RunRecord:
        t0 = time.perf_counter()
        expl = explain(crop, classifier, masks, method=ENGINE_METHOD, seed=opts.seed)
        total = time.perf_counter() - t0
        stages = {k: float(expl.timings.get(k, 0.0)) for k in ("evaluations", "fit", "values")}
        stages["total"] = total
        last[key] = expl
        return RunRecord(stages=stages, counts={"evaluations": expl.num_evaluations, "concepts": len(masks)},
                         info={"method": expl.method, "value_type": expl.value_type, "provider": expl.provider,
                               "target": expl.target, "probability": expl.probability,
                               "settings": expl.settings, "values": expl.values.tolist()})

    return run


def _explain_sides(pair: ClassifierPair, crop: np.ndarray, masks: np.ndarray, opts: BenchOptions,
                   ref_settings: ReferenceSettings) -> tuple[Callable[[], RunRecord], Callable[[], RunRecord], dict]:
    reference = ReferenceEAC(pair.torch, ref_settings)
    last: dict[str, Any] = {}
    engine_run = engine_explain_run(pair.engine, crop, masks, opts, last, "engine")

    def reference_run() -> RunRecord:
        t0 = time.perf_counter()
        res = reference.explain(crop, masks)
        total = time.perf_counter() - t0
        stages = dict(res.timings)
        stages["total"] = total
        last["reference"] = res
        return RunRecord(stages=stages, counts={"evaluations": res.n_evaluations, "concepts": len(masks)},
                         info={"target": res.target, "probability": res.probability,
                               "settings": ref_settings.to_dict(), "values": res.values.tolist(),
                               "final_loss": res.losses[-1] if res.losses else None})

    return engine_run, reference_run, last


def _reference_settings(opts: BenchOptions) -> ReferenceSettings:
    base = QUICK.reference if opts.quick else ReferenceSettings()
    return replace(base, seed=opts.seed)


def _report(opts: BenchOptions, sides: dict[str, SideResult], provider: str | None, settings: dict,
            extra: dict | None = None, tables: list | None = None) -> BenchReport:
    eng, ref = sides.get("engine"), sides.get("reference")
    return BenchReport(
        workload=opts.workload, quick=opts.quick, command=opts.command, sides=sides,
        ratios=ratios(eng, ref) if eng is not None and ref is not None else {},
        machine=machine_info(opts.threads), provider=provider, settings=settings,
        extra=extra or {}, tables=tables or [],
    )


def _agreement_table(engine_values, reference_values, engine_target, reference_target) -> tuple:
    agree = ranking_agreement(engine_values, reference_values)
    rows = [["engine eac vs reference", f"{agree['spearman']:.3f}", f"{agree['top1']:.0f}",
             f"{agree[f'top{TOP_K}']:.2f}", f"{engine_target} / {reference_target}"]]
    return agree, ("ranking agreement (same image, same concepts)",
                   ["pair", "Spearman", "top-1 same", f"top-{TOP_K} overlap", "explained class engine / reference"],
                   rows)


def classifier_alone(classifier: Any, crop: np.ndarray, batch: int, runs: int = 3) -> dict[str, float]:
    """Untimed side measurement: the engine's classifier alone on one batch (median of ``runs``)."""
    x = classifier.normalize(np.repeat(crop[None], batch, axis=0).astype(np.float32))
    classifier.run(x)  # warm
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        classifier.run(x)
        seconds.append(time.perf_counter() - t0)
    med = float(np.median(seconds))
    return {"batch": batch, "seconds_per_batch": med, "images_per_second": batch / med if med > 0 else float("nan")}


def throughput_table(engine: SideResult, reference: SideResult, alone: dict[str, float], batch: int) -> tuple:
    """Images per second in each side's evaluations stage, and the engine's classifier alone."""
    rows = []
    for side in (engine, reference):
        n = side.counts.get("evaluations", 0)
        sec = side.stages["evaluations"].median
        rows.append([f"{side.name}: evaluations stage", f"{n:.0f}", _f2(sec), _f2(n / sec) if sec > 0 else "nan"])
    if "evaluations" in engine.stages and not math.isnan(alone["images_per_second"]):
        n = engine.counts.get("evaluations", 0)
        est = n / alone["images_per_second"]
        rows.append([f"engine: classifier alone (batch {batch}, ONNX Runtime)", f"{n:.0f} (estimated)", _f2(est),
                     _f2(alone["images_per_second"])])
    return ("classifier throughput", ["what", "images", "seconds", "images/s"], rows)


# --- workloads -----------------------------------------------------------------------------------


#: Fewest SAM masks the explain workload accepts before falling back to SLIC regions.
MIN_SAM_CONCEPTS = 2


def explain_masks(opts: BenchOptions, crop: np.ndarray) -> tuple[np.ndarray, str]:
    """The explain workload's concepts: SAM masks when a SAM is given, else exactly N SLIC regions.

    With ``--sam``/``--sam-checkpoint`` the engine's SAM generator runs once,
    untimed, on the crop (reference settings) and both sides explain with its
    masks. A SAM that keeps fewer than :data:`MIN_SAM_CONCEPTS` masks (random
    weights) gives way to the SLIC regions, and the report says so.
    """
    if opts.sam or opts.sam_checkpoint:
        from ..engine.concepts import Frame

        sam = sam_pair(opts)
        opts.log("concepts for the explain workload: SAM on the crop (untimed)...")
        concepts = _engine_sam(sam.folder, SamReferenceSettings(), opts)(crop, Frame.identity(crop.shape[:2]))
        if len(concepts) >= MIN_SAM_CONCEPTS:
            return concepts.masks, f"SAM ({sam.description}), {len(concepts)} masks"
        fallback = exact_regions(crop, opts.concepts_n)
        return fallback, (f"SLIC, exactly {len(fallback)} regions (SAM kept only {len(concepts)} masks)")
    masks = exact_regions(crop, opts.concepts_n)
    return masks, f"SLIC, exactly {len(masks)} regions"


#: Side of the explain workload's int8 option.
INT8_SIDE = "engine_int8"


def run_explain(opts: BenchOptions) -> BenchReport:
    """The explain stage: engine ``eac`` vs the reference on N given concept masks (and, with
    ``--int8``, the engine on an int8 copy of the classifier, with its agreement)."""
    import tempfile

    pair = classifier_pair(opts)
    photo_name = opts.photo_for(pair.scenes)
    crop = crop_for(load_photo(photo_name), pair.engine.input_hw, pair.resize)
    masks, mask_source = explain_masks(opts, crop)
    ref_settings = _reference_settings(opts)
    engine_run, reference_run, last = _explain_sides(pair, crop, masks, opts, ref_settings)
    runs = {"engine": engine_run}
    tables, extra = [], {}
    with tempfile.TemporaryDirectory(prefix="eac-bench-int8-") as workdir:
        if opts.int8:
            from ..engine.classifier import Classifier
            from .int8 import int8_copy

            opts.log("int8 classifier: quantising on the image's own masked batches (untimed)...")
            folder, seconds = int8_copy(pair.folder, pair.engine, crop, masks, opts.seed, workdir)
            int8_classifier = Classifier.from_folder(folder, session_options=opts.session_options())
            runs[INT8_SIDE] = engine_explain_run(int8_classifier, crop, masks, opts, last, INT8_SIDE)
            extra["int8_quantization_seconds"] = seconds
        runs["reference"] = reference_run
        measured = measure_sides(runs, opts.warmup, opts.repeat, opts.log)
    engine, reference = measured["engine"], measured["reference"]
    agree, table = _agreement_table(last["engine"].values, last["reference"].values,
                                    last["engine"].target, last["reference"].target)
    batch = int(last["engine"].settings.get("batch_size") or 1)
    alone = classifier_alone(pair.engine, crop, batch)
    tables += [throughput_table(engine, reference, alone, batch), table]
    if opts.int8:
        from .int8 import AGREEMENT_HEADER, agreement_rows, int8_agreement

        extra["int8_agreement"] = int8_agreement(last["engine"], last[INT8_SIDE])
        tables.append(_int8_table(engine, measured[INT8_SIDE], extra["int8_quantization_seconds"]))
        tables.append(("int8 classifier: its explanation against the fp32 one (same image, concepts, seed)",
                       AGREEMENT_HEADER, agreement_rows(extra["int8_agreement"])))
    settings = {
        "photo": photo_name if photo_name != SCENE_PHOTO else f"generated scene (seed {EXPLAIN_SCENE_SEED})",
        "crop": list(crop.shape[:2]), "resize": pair.resize,
        "n_concepts": len(masks), "concept_masks": mask_source,
        "classifier": pair.description, "classifier_folder": str(pair.folder), "weights": opts.weights,
        "classifier_record": pair.record, "engine_method": ENGINE_METHOD, "reference": ref_settings.to_dict(),
        "load_seconds": pair.load_seconds, "onnxruntime_settings": opts.ort,
    }
    return _report(opts, measured, pair.engine.provider, settings,
                   extra={"agreement": agree, "engine_classifier_alone": alone, **extra}, tables=tables)


def _int8_table(fp32: SideResult, int8: SideResult, quantize_seconds: float) -> tuple:
    """Explain-stage seconds of the engine on the fp32 and the int8 classifier."""
    rows = []
    for name, side in (("engine, fp32 classifier", fp32), ("engine, int8 classifier", int8)):
        total, evals = side.stages["total"].median, side.stages["evaluations"].median
        speed = "1.0×" if side is fp32 else f"{fp32.stages['total'].median / total:.2f}×"
        rows.append([name, _f2(total), _f2(evals), f"{side.counts.get('evaluations', 0):.0f}", speed,
                     side_load(side)])
    rows.append(["quantisation (calibration + writing the folder, once per image here)", _f2(quantize_seconds),
                 "", "", "", ""])
    return ("int8 classifier (an option, never the default)",
            ["engine", "total s", "evaluations s", "evaluations", "speed-up vs fp32", LOAD_HEADER], rows)


def _sam_settings(opts: BenchOptions) -> SamReferenceSettings:
    pps = QUICK.points_per_side if opts.quick else SamReferenceSettings().points_per_side
    return SamReferenceSettings(points_per_side=pps)


def _engine_sam(folder: Path, settings: SamReferenceSettings, opts: BenchOptions):
    from ..engine.sam import SamConceptGenerator

    return SamConceptGenerator.from_folder(
        folder, session_options=opts.session_options(), points_per_side=settings.points_per_side,
        points_per_batch=settings.points_per_batch, pred_iou_thresh=settings.pred_iou_thresh,
        stability_score_thresh=settings.stability_score_thresh, box_nms_thresh=settings.box_nms_thresh,
        min_mask_region_area=settings.min_mask_region_area, prompt_schedule="grid",  # the reference's prompts
    )


def _concept_stages(timings: dict[str, float], total: float) -> dict[str, float]:
    """Encoder time and the rest (prompt decoding + post-processing), comparable across sides."""
    encoder = sum(v for k, v in timings.items() if "encoder" in k.lower())
    return {"encoder": encoder, "masks (decoder + post)": max(total - encoder, 0.0)}


def _concepts_sides(sam: SamPair, crop: np.ndarray, opts: BenchOptions, settings: SamReferenceSettings):
    from ..engine.concepts import Frame

    generator = _engine_sam(sam.folder, settings, opts)
    reference = ReferenceSamConcepts(sam.torch, settings)
    frame = Frame.identity(crop.shape[:2])
    last: dict[str, Any] = {}

    def engine_run() -> RunRecord:
        t0 = time.perf_counter()
        concepts = generator(crop, frame)
        total = time.perf_counter() - t0
        last["engine"] = concepts
        stages = _concept_stages(concepts.timings, total)
        stages["total"] = total
        return RunRecord(stages=stages, counts={"prompts": settings.points_per_side ** 2, "masks": len(concepts)},
                         info={"engine_timings": dict(concepts.timings), "provider": concepts.info.get("provider")},
                         detail={k: float(v) for k, v in concepts.timings.items()})

    def reference_run() -> RunRecord:
        t0 = time.perf_counter()
        res = reference.generate(crop)
        total = time.perf_counter() - t0
        last["reference"] = res
        stages = _concept_stages({"encoder": res.timings["encoder"]}, total)
        stages["total"] = total
        return RunRecord(stages=stages, counts={"prompts": res.n_prompts, "masks": len(res.masks)},
                         info={"reference_timings": res.timings},
                         detail={"encoder (set_image)": res.timings["encoder"],
                                 "decoder (predict_torch, incl. upsampling)": res.timings["decoder"],
                                 "postprocess (filters, NMS, RLE)": res.timings["postprocess"]})

    return generator, reference, engine_run, reference_run, last


def _keep_all_agreement(sam: SamPair, crop: np.ndarray, opts: BenchOptions) -> dict[str, Any]:
    """Untimed: both generators with the IoU, stability and NMS filters off, compared mask by mask."""
    from ..engine.concepts import Frame

    pps = QUICK.agreement_points_per_side if opts.quick else AGREEMENT_POINTS_PER_SIDE
    settings = replace(SamReferenceSettings(points_per_side=pps)).keep_all()
    opts.log(f"agreement check: both generators keep every candidate ({pps}×{pps} grid)...")
    engine_masks = _engine_sam(sam.folder, settings, opts)(crop, Frame.identity(crop.shape[:2])).masks
    reference_masks = ReferenceSamConcepts(sam.torch, settings).generate(crop).masks
    out = mask_agreement(engine_masks, reference_masks)
    out["settings"] = settings.to_dict()
    return out


def _sam_crop(opts: BenchOptions) -> np.ndarray:
    return crop_for(load_photo(opts.photo_for(False)), (models.CROP, models.CROP), models.RESIZE)


#: Extra engine rows of ``eac bench concepts`` (same crop, grid and settings as the ViT-B engine side).
SAM_ORDER_SIDE = "engine_sam_order_decoder"
EFFICIENTVIT_SIDE = "engine_efficientvit_l0"
EFFICIENTVIT_INT8_SIDE = "engine_efficientvit_l0_int8_decoder"
EFFICIENTVIT_BENCH_TYPE = "efficientvit_l0"


def _engine_concepts_run(folder: Path, crop: np.ndarray, opts: BenchOptions, settings: SamReferenceSettings,
                         last: dict[str, Any], key: str) -> Callable[[], RunRecord]:
    """A timed run of the engine's generator on ``folder`` (the same crop and settings as the engine side)."""
    from ..engine.concepts import Frame

    generator = _engine_sam(folder, settings, opts)
    frame = Frame.identity(crop.shape[:2])

    def run() -> RunRecord:
        t0 = time.perf_counter()
        concepts = generator(crop, frame)
        total = time.perf_counter() - t0
        last[key] = concepts
        stages = _concept_stages(concepts.timings, total)
        stages["total"] = total
        return RunRecord(stages=stages, counts={"prompts": settings.points_per_side ** 2, "masks": len(concepts)},
                         info={"engine_timings": dict(concepts.timings), "folder": str(folder)},
                         detail={k: float(v) for k, v in concepts.timings.items()})

    return run


def _extra_concept_runs(sam: SamPair, crop: np.ndarray, opts: BenchOptions, settings: SamReferenceSettings,
                        last: dict[str, Any]) -> tuple[dict[str, Callable[[], RunRecord]], dict[str, str]]:
    """The rows beside the engine's ViT-B: its decoder in SAM's operation order (what the factored, context-split
    decoder replaced; same weights) and EfficientViT-SAM-L0 (random weights, the package's architecture)."""
    runs: dict[str, Callable[[], RunRecord]] = {}
    notes: dict[str, str] = {}
    if not opts.sam:
        opts.log("exporting the same SAM with the decoder in SAM's operation order (cached)...")
        folder = models.export_bench_sam(sam.model_type, checkpoint=opts.sam_checkpoint, decoder_graph="batched")
        runs[SAM_ORDER_SIDE] = _engine_concepts_run(folder, crop, opts, settings, last, SAM_ORDER_SIDE)
        notes[SAM_ORDER_SIDE] = f"{sam.description}; decoder.onnx in segment-anything's operation order"
    try:
        opts.log("exporting EfficientViT-SAM-L0 (random weights, cached)...")
        folder = models.export_bench_efficientvit_sam(EFFICIENTVIT_BENCH_TYPE)
    except Exception as exc:  # the efficientsam package missing or broken: the row is skipped, with the reason
        notes[EFFICIENTVIT_SIDE] = f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        opts.log(f"EfficientViT-SAM-L0 row {notes[EFFICIENTVIT_SIDE]}")
    else:
        runs[EFFICIENTVIT_SIDE] = _engine_concepts_run(folder, crop, opts, settings, last, EFFICIENTVIT_SIDE)
        notes[EFFICIENTVIT_SIDE] = (f"EfficientViT-SAM-L0 (512 input), random weights (seed {models.BENCH_SEED}); "
                                    "mask agreement with its own generator: tests/export/test_efficientvit_sam.py")
        if opts.quick:  # quantising and validating the decoder takes ~50 s here; tests/export covers it
            notes[EFFICIENTVIT_INT8_SIDE] = "skipped in QUICK runs (the int8 decoder's export takes ~50 s)"
            return runs, notes
        opts.log("exporting EfficientViT-SAM-L0 with the int8 decoder (cached)...")
        folder = models.export_bench_efficientvit_sam(EFFICIENTVIT_BENCH_TYPE, decoder_precision="int8")
        runs[EFFICIENTVIT_INT8_SIDE] = _engine_concepts_run(folder, crop, opts, settings, last,
                                                            EFFICIENTVIT_INT8_SIDE)
        check = _read_manifest(folder, "sam")["validation"]["decoder_precision"]
        notes[EFFICIENTVIT_INT8_SIDE] = (
            f"same weights, int8 decoder: max abs logit diff {check['max_abs_logit_diff']:.3g} vs fp32, mask IoU per "
            f"candidate mean {check['mask_iou_same_candidate']['mean']:.3f}")
    return runs, notes


def _generators_table(sides: dict[str, SideResult], notes: dict[str, str]) -> tuple:
    """Every concept generator of the run side by side: total, encoder, the rest, speed-up, peak memory."""
    reference = sides["reference"].stages["total"].median
    rows = []
    for name, side in sides.items():
        total = side.stages["total"].median
        rows.append([name, f"{total:.2f}", f"{side.stages['encoder'].median:.2f}",
                     f"{side.stages['masks (decoder + post)'].median:.2f}",
                     "1.0×" if name == "reference" else f"{reference / total:.1f}×", side_load(side),
                     f"{side.peak_rss_bytes / 2**20:.0f} (+{side.peak_rss_increase_bytes / 2**20:.0f})",
                     _fmt_masks(side)])
    for name, note in notes.items():
        if name not in sides:
            rows.append([name, "—", "—", "—", "—", "—", "—", "—", note])
    for row in rows:
        if len(row) == 8:
            row.append(notes.get(row[0], ""))
    return ("concept generators, same crop and grid (median s; speed-up vs segment-anything's ViT-B generator)",
            ["side", "total s", "encoder s", "masks s", "speed-up", LOAD_HEADER, "peak RSS MB (rise)", "masks",
             "notes"], rows)


def _fmt_masks(side: SideResult) -> str:
    value = side.counts.get("masks")
    return "—" if value is None else f"{int(value)}"


def run_concepts(opts: BenchOptions) -> BenchReport:
    """The concept stage: engine SAM generators (ViT-B, and EfficientViT-SAM-L0) vs segment-anything's generator."""
    sam = sam_pair(opts)
    crop = _sam_crop(opts)
    settings = _sam_settings(opts)
    generator, _, engine_run, reference_run, last = _concepts_sides(sam, crop, opts, settings)
    extra_runs, notes = _extra_concept_runs(sam, crop, opts, settings, last)
    measured = measure_sides({"engine": engine_run, **extra_runs, "reference": reference_run}, opts.warmup,
                             opts.repeat, opts.log)
    engine, reference = measured["engine"], measured["reference"]
    extra_sides = {name: measured[name] for name in extra_runs}
    same = mask_agreement(last["engine"].masks, last["reference"].masks)
    extra: dict[str, Any] = {"agreement_default_settings": same, "generator_notes": notes}
    if SAM_ORDER_SIDE in last:
        extra["agreement_sam_order_decoder_vs_engine"] = mask_agreement(last["engine"].masks,
                                                                        last[SAM_ORDER_SIDE].masks)
    if EFFICIENTVIT_INT8_SIDE in last:
        extra["agreement_efficientvit_int8_vs_fp32_decoder"] = mask_agreement(last[EFFICIENTVIT_SIDE].masks,
                                                                              last[EFFICIENTVIT_INT8_SIDE].masks)
    rows = [["default filters (timed runs)", str(same["engine_masks"]), str(same["reference_masks"]),
             _f3(same["mean_best_iou_reference_in_engine"]), _f3(same["mean_best_iou_engine_in_reference"])]]
    if opts.agreement:
        keep = _keep_all_agreement(sam, crop, opts)
        extra["agreement_keep_all"] = keep
        rows.append([f"keep every candidate ({keep['settings']['points_per_side']}² grid, untimed)",
                     str(keep["engine_masks"]), str(keep["reference_masks"]),
                     _f3(keep["mean_best_iou_reference_in_engine"]), _f3(keep["mean_best_iou_engine_in_reference"])])
    table = ("mask agreement (engine vs segment-anything, same weights)",
             ["run", "engine masks", "reference masks", "mean best IoU ref→engine", "engine→ref"], rows)
    provider = getattr(generator, "provider", None) or last["engine"].info.get("provider")
    run_settings = {"photo": opts.photo_for(False), "crop": list(crop.shape[:2]), "sam": sam.description,
                    "sam_folder": str(sam.folder), "generator": settings.to_dict(), "load_seconds": sam.load_seconds}
    sides = {"engine": engine, **extra_sides, "reference": reference}
    tables = [_generators_table(sides, notes), table]
    scene = scene_sam_rows(opts)  # the trained scene SAM: real post-processing under the default filters
    extra["scene_sam"] = scene.extra
    if scene.table is not None:
        tables.append(scene.table)
    return _report(opts, {**sides, **scene.sides}, provider, run_settings, extra, tables)


# --- fidelity ------------------------------------------------------------------------------------


def run_fidelity(opts: BenchOptions) -> BenchReport:
    """Concept values vs exact Shapley values of the trained classifier, and insertion/deletion AUC."""
    from ..engine.evaluator import MaskedEvaluator
    from ..engine.explainer import explain
    from ..engine.metrics import insertion_deletion, random_ranking_auc

    sm = trained_scene_model(opts)
    count = QUICK.fidelity_scenes if opts.quick else FIDELITY_SCENES
    scenes = fidelity_scenes(sm.size, count)
    ref_settings = _reference_settings(opts)
    reference = ReferenceEAC(sm.torch, ref_settings)
    faithful_opts = dict(QUICK.faithful_options) if opts.quick else {}
    names = [*list(FIDELITY_METHODS), "reference"]
    per: dict[str, dict[str, list[float]]] = {m: {} for m in [*names, "shapley-exact", RANDOM_ROW]}

    def add(method: str, key: str, value: float) -> None:
        per[method].setdefault(key, []).append(float(value))

    for i, (scene, concepts) in enumerate(scenes):
        opts.log(f"fidelity: scene {i + 1}/{len(scenes)} ({len(concepts)} concepts)")
        crop, masks = scene.image, concepts.masks
        t0 = time.perf_counter()
        exact = explain(crop, sm.engine, masks, method="shapley-exact", seed=opts.seed)
        exact_s = time.perf_counter() - t0
        target = exact.target
        evaluator = MaskedEvaluator(sm.engine, crop, masks, baseline="black")
        results: dict[str, tuple[np.ndarray, int, float]] = {
            "shapley-exact": (exact.values, exact.num_evaluations, exact_s)}
        for method in FIDELITY_METHODS:
            options = faithful_opts if method == "eac-faithful" else {}
            t0 = time.perf_counter()
            e = explain(crop, sm.engine, masks, method=method, target=target, seed=opts.seed, **options)
            results[method] = (e.values, e.num_evaluations, time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = reference.explain(crop, masks, target=target)
        results["reference"] = (r.values, r.n_evaluations, time.perf_counter() - t0)
        for method, (values, n_eval, seconds) in results.items():
            agree = ranking_agreement(values, exact.values)
            auc = insertion_deletion(evaluator, np.argsort(-np.asarray(values), kind="stable"), target,
                                     full_prob=exact.probability)
            add(method, "spearman", agree["spearman"])
            add(method, "top1", agree["top1"])
            add(method, f"top{TOP_K}", agree[f"top{TOP_K}"])
            add(method, "insertion", auc["insertion"])
            add(method, "deletion", auc["deletion"])
            add(method, "evaluations", n_eval)
            add(method, "seconds", seconds)
            add(method, "key_concept_first", float(int(np.argmax(values)) == int(concepts.info.get("key_concept", 0))))
        rand = random_ranking_auc(evaluator, target, np.random.default_rng(opts.seed + i),
                                  full_prob=exact.probability)
        add(RANDOM_ROW, "insertion", rand["insertion"])
        add(RANDOM_ROW, "deletion", rand["deletion"])
    summary = {m: {k: float(np.nanmean(v)) for k, v in d.items()} for m, d in per.items()}
    header = ["method", "Spearman vs exact", "top-1", f"top-{TOP_K}", "insertion ↑", "deletion ↓",
              "evaluations", "key object first", "seconds"]
    rows = []
    for m in ["shapley-exact", *names]:
        s = summary[m]
        rows.append([m, _f3(s["spearman"]), _f2(s["top1"]), _f2(s[f"top{TOP_K}"]), _f2(s["insertion"]),
                     _f2(s["deletion"]), f"{s['evaluations']:.0f}", _f2(s["key_concept_first"]), _f2(s["seconds"])])
    r = summary[RANDOM_ROW]
    rows.append([RANDOM_ROW, "", "", "", _f2(r["insertion"]), _f2(r["deletion"]), "", "", ""])
    table = (f"fidelity on {len(scenes)} scenes (means; exact Shapley of the classifier is the ground truth)",
             header, rows)
    settings = {"classifier": sm.description, "classifier_folder": str(sm.folder), "scenes": len(scenes),
                "scene_seed": FIDELITY_SCENE_SEED, "concepts_per_scene": [len(c) for _, c in scenes],
                "background_cells": FIDELITY_BACKGROUND_CELLS, "reference": ref_settings.to_dict(),
                "eac_faithful_options": faithful_opts or "defaults"}
    return _report(opts, {}, sm.engine.provider, settings,
                   extra={"summary": summary, "per_scene": per}, tables=[table])


def _f3(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def _f2(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.2f}"
