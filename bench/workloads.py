"""The benchmark workloads: explain, concepts, end-to-end, fidelity.

Each workload builds both sides on the same inputs — the engine through the
runtime (ONNX Runtime via :mod:`eac.engine`), the reference through PyTorch
eager (:mod:`eac.bench.reference`) — times them with
:func:`eac.bench.harness.measure`, and returns a
:class:`~eac.bench.harness.BenchReport`.

``explain``
    One photograph from scikit-image (resize 256, centre crop 224), N concept
    masks (default 32, exactly N regions from SLIC superpixels), a
    ResNet-50-sized classifier (the bench ResNet-50 with random weights, or a
    classifier folder). Engine method ``eac`` vs the reference.
``concepts``
    SAM ViT-B (random weights or a checkpoint) on the same crop, 32×32 point
    grid: the engine's ``SamConceptGenerator`` vs segment-anything's own
    ``SamAutomaticMaskGenerator``; plus an untimed agreement check with the IoU
    stability and NMS filters off, so both keep every candidate (mean best IoU
    of the reference's masks among the engine's).
``end-to-end``
    Both stages: SAM concepts, then the explanation with them.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import models
from .harness import (
    DEFAULT_PHOTO,
    WORKLOADS,
    BenchError,
    BenchReport,
    RunRecord,
    SideResult,
    machine_info,
    measure,
    ratios,
)
from .reference import (
    ReferenceEAC,
    ReferenceSamConcepts,
    ReferenceSettings,
    SamReferenceSettings,
    TorchClassifier,
)
from .scene_sam_bench import scene_sam_rows

DEFAULT_N_CONCEPTS = 32
#: SLIC compactness of the bench's concept masks.
SLIC_COMPACTNESS = 10.0
#: Engine method of the timing workloads.
ENGINE_METHOD = "eac"
#: Methods compared by the fidelity workload (besides the reference and exact Shapley).
FIDELITY_METHODS = ("eac", "eac-faithful", "kernelshap", "lime")
#: Exact Shapley enumeration limit of the fidelity workload.
FIDELITY_MAX_N = 12
#: Scene background tiles per side in the fidelity workload (objects + tiles ≤ 12 concepts).
FIDELITY_BACKGROUND_CELLS = 3
FIDELITY_SCENES = 8
#: Scene generator seed of the fidelity workload (scenes drawn in order; those with N > 12 skipped).
FIDELITY_SCENE_SEED = 1234
TOP_K = 3
#: Fidelity table row of uniformly random rankings (insertion/deletion baseline).
RANDOM_ROW = "random ranking"
#: Evaluations the untimed SAM agreement check uses: a 16×16 grid (256 prompts).
AGREEMENT_POINTS_PER_SIDE = 16


@dataclass(frozen=True)
class QuickSettings:
    """What a QUICK (reduced) run changes."""

    classifier_arch: str = "tiny"
    sam_model_type: str = "tiny"
    points_per_side: int = 4
    agreement_points_per_side: int = 4
    n_concepts: int = 12
    reference: ReferenceSettings = field(
        default_factory=lambda: ReferenceSettings(n_coalitions=160, epochs=3, mc_samples=2000))
    faithful_options: tuple = (("num_coalitions", 160), ("epochs", 3), ("mc_samples", 2000))
    fidelity_scenes: int = 2
    scene_size: int = 64
    train_n: int = 400
    train_epochs: int = 2


QUICK = QuickSettings()


@dataclass
class BenchOptions:
    """Options of one ``eac bench`` run (the command-line flags)."""

    workload: str
    repeat: int = 1
    warmup: int = 0
    providers: str = "auto"
    threads: int | None = None
    quick: bool = False
    classifier: str | None = None
    sam: str | None = None
    sam_checkpoint: str | None = None
    n_concepts: int | None = None
    photo: str = DEFAULT_PHOTO
    seed: int = 0
    agreement: bool = True
    progress: Callable[[str], None] | None = None
    command: str = ""

    @property
    def concepts_n(self) -> int:
        if self.n_concepts is not None:
            return int(self.n_concepts)
        return QUICK.n_concepts if self.quick else DEFAULT_N_CONCEPTS

    def session_options(self):
        from ..engine.session import SessionOptions

        return SessionOptions(providers=self.providers, cpu_threads=self.threads)

    def log(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)


# --- inputs --------------------------------------------------------------------------------------


def load_photo(name: str = DEFAULT_PHOTO) -> np.ndarray:
    """A colour photograph shipped with scikit-image (H×W×3 uint8 RGB)."""
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


def _read_manifest(folder: str | Path, kind: str) -> dict:
    from ..engine.manifest import read_manifest

    return read_manifest(folder, kind)


def _recorded_path(entry: Any) -> str | None:
    """The existing file a manifest entry names (a path string or ``{"path": ...}``), else None."""
    path = entry.get("path") if isinstance(entry, dict) else entry
    return str(path) if path and Path(str(path)).is_file() else None


def torch_classifier_for_folder(folder: str | Path) -> TorchClassifier:
    """Rebuild the PyTorch model an exported classifier folder came from.

    The manifest's ``source`` says how: a ``--module`` factory (plus its
    ``--checkpoint``, which must still exist), or a torchvision ``resnet50`` with
    a state-dict file (loaded into the bench's torchvision-compatible
    ResNet-50). Anything else cannot be run by the PyTorch reference.
    """
    from ..export._torch_utils import import_factory

    m = _read_manifest(folder, "classifier")
    src = m.get("source", {}) or {}
    pre = m["preprocess"]
    head = src.get("feature_layer") or "fc"
    if src.get("module"):
        module = import_factory(src["module"])()
        ckpt = src.get("checkpoint")
        if ckpt:
            path = _recorded_path(ckpt)
            if path is None:
                raise BenchError(f"{folder}: the reference needs the PyTorch weights, but the checkpoint "
                                 f"recorded in the manifest ({ckpt}) is gone")
            models.load_state_dict(module, path)
    elif src.get("torchvision") == "resnet50" and _recorded_path(src.get("weights")):
        module = models.resnet50(checkpoint=_recorded_path(src["weights"]), num_classes=int(m["num_classes"]))
    else:
        raise BenchError(f"{folder}: the PyTorch reference cannot rebuild this model (source {src}); "
                         "benchmark a folder exported with --module/--checkpoint or a torchvision resnet50 state dict")
    if pre.get("channel_order", "RGB") != "RGB":
        raise BenchError(f"{folder}: the reference feeds RGB images; this model expects {pre.get('channel_order')}")
    return TorchClassifier.from_module(module.float().eval(), pre["mean"], pre["std"], head=head)


@dataclass
class ClassifierPair:
    """The same classifier for both sides."""

    folder: Path
    engine: Any  # eac.engine.classifier.Classifier
    torch: TorchClassifier
    resize: int | None
    description: str
    load_seconds: dict[str, float]


def classifier_pair(opts: BenchOptions) -> ClassifierPair:
    """The engine and PyTorch versions of the explain workload's classifier."""
    from ..engine.classifier import Classifier

    t0 = time.perf_counter()
    if opts.classifier:
        folder = Path(opts.classifier)
        description = f"classifier folder {folder}"
    else:
        arch = QUICK.classifier_arch if opts.quick else "resnet50"
        opts.log(f"exporting the bench {arch} classifier (random weights, cached)...")
        folder = models.export_bench_classifier(arch)
        name = "tiny ResNet" if arch == "tiny" else "ResNet-50"
        description = f"bench {name}, random weights (seed {models.BENCH_SEED})"
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = Classifier.from_folder(folder, session_options=opts.session_options())
    engine_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    if opts.classifier:
        torch_model = torch_classifier_for_folder(folder)
    else:
        arch = QUICK.classifier_arch if opts.quick else "resnet50"
        module = models.CLASSIFIERS[arch][1]()
        torch_model = TorchClassifier.from_module(module, models.IMAGENET_MEAN, models.IMAGENET_STD)
    torch_load = time.perf_counter() - t0
    resize = _read_manifest(folder, "classifier")["preprocess"].get("resize")
    return ClassifierPair(folder, engine, torch_model, resize, description,
                          {"export_or_find": export_s, "engine": engine_load, "reference": torch_load})


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


# --- agreement -----------------------------------------------------------------------------------


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every mask of ``a`` (A×H×W) with every mask of ``b`` (B×H×W) → A×B."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def ranking_agreement(values: np.ndarray, reference: np.ndarray, k: int = TOP_K) -> dict[str, float]:
    """Spearman correlation, top-1 match and top-k overlap of two value vectors."""
    from ..engine.metrics import spearman

    values, reference = np.asarray(values, float), np.asarray(reference, float)
    k = min(k, len(values))
    top_v = np.argsort(-values, kind="stable")
    top_r = np.argsort(-reference, kind="stable")
    return {
        "spearman": float(spearman(values, reference)) if len(values) > 1 else float("nan"),
        "top1": float(top_v[0] == top_r[0]) if len(values) else float("nan"),
        f"top{TOP_K}": float(len(set(top_v[:k]) & set(top_r[:k])) / k) if k else float("nan"),
    }


# --- sides ---------------------------------------------------------------------------------------


def _engine_explain(pair: ClassifierPair, crop: np.ndarray, masks: np.ndarray, opts: BenchOptions,
                    method: str = ENGINE_METHOD, **options: Any):
    from ..engine.explainer import explain

    return explain(crop, pair.engine, masks, method=method, seed=opts.seed, **options)


def _explain_sides(pair: ClassifierPair, crop: np.ndarray, masks: np.ndarray, opts: BenchOptions,
                   ref_settings: ReferenceSettings) -> tuple[Callable[[], RunRecord], Callable[[], RunRecord], dict]:
    reference = ReferenceEAC(pair.torch, ref_settings)
    last: dict[str, Any] = {}

    def engine_run() -> RunRecord:
        t0 = time.perf_counter()
        expl = _engine_explain(pair, crop, masks, opts)
        total = time.perf_counter() - t0
        stages = {k: float(expl.timings.get(k, 0.0)) for k in ("evaluations", "fit", "values")}
        stages["total"] = total
        last["engine"] = expl
        return RunRecord(stages=stages, counts={"evaluations": expl.num_evaluations, "concepts": len(masks)},
                         info={"method": expl.method, "value_type": expl.value_type, "provider": expl.provider,
                               "target": expl.target, "probability": expl.probability,
                               "settings": expl.settings, "values": expl.values.tolist()})

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


def run_explain(opts: BenchOptions) -> BenchReport:
    """The explain stage: engine ``eac`` vs the reference on N given concept masks."""
    pair = classifier_pair(opts)
    photo = load_photo(opts.photo)
    crop = crop_for(photo, pair.engine.input_hw, pair.resize)
    masks, mask_source = explain_masks(opts, crop)
    ref_settings = _reference_settings(opts)
    engine_run, reference_run, last = _explain_sides(pair, crop, masks, opts, ref_settings)
    engine = measure("engine", engine_run, opts.warmup, opts.repeat, opts.log)
    reference = measure("reference", reference_run, opts.warmup, opts.repeat, opts.log)
    agree, table = _agreement_table(last["engine"].values, last["reference"].values,
                                    last["engine"].target, last["reference"].target)
    batch = int(last["engine"].settings.get("batch_size") or 1)
    alone = classifier_alone(pair.engine, crop, batch)
    through = throughput_table(engine, reference, alone, batch)
    settings = {
        "photo": f"skimage.data.{opts.photo}", "crop": list(crop.shape[:2]), "resize": pair.resize,
        "n_concepts": len(masks), "concept_masks": mask_source,
        "classifier": pair.description, "classifier_folder": str(pair.folder),
        "engine_method": ENGINE_METHOD, "reference": ref_settings.to_dict(), "load_seconds": pair.load_seconds,
    }
    return _report(opts, {"engine": engine, "reference": reference}, pair.engine.provider, settings,
                   extra={"agreement": agree, "engine_classifier_alone": alone}, tables=[through, table])


def _sam_settings(opts: BenchOptions) -> SamReferenceSettings:
    pps = QUICK.points_per_side if opts.quick else SamReferenceSettings().points_per_side
    return SamReferenceSettings(points_per_side=pps)


def _engine_sam(folder: Path, settings: SamReferenceSettings, opts: BenchOptions):
    from ..engine.sam import SamConceptGenerator

    return SamConceptGenerator.from_folder(
        folder, session_options=opts.session_options(), points_per_side=settings.points_per_side,
        points_per_batch=settings.points_per_batch, pred_iou_thresh=settings.pred_iou_thresh,
        stability_score_thresh=settings.stability_score_thresh, box_nms_thresh=settings.box_nms_thresh,
        min_mask_region_area=settings.min_mask_region_area,
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


def mask_agreement(engine_masks: np.ndarray, reference_masks: np.ndarray) -> dict[str, float]:
    """Mean best IoU of each reference mask among the engine's masks, and the reverse."""
    iou = mask_iou_matrix(reference_masks, engine_masks)
    return {
        "reference_masks": len(reference_masks),
        "engine_masks": len(engine_masks),
        "mean_best_iou_reference_in_engine": float(iou.max(1).mean()) if iou.size else float("nan"),
        "mean_best_iou_engine_in_reference": float(iou.max(0).mean()) if iou.size else float("nan"),
    }


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
    return crop_for(load_photo(opts.photo), (models.CROP, models.CROP), models.RESIZE)


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
                     "1.0×" if name == "reference" else f"{reference / total:.1f}×",
                     f"{side.peak_rss_bytes / 2**20:.0f} (+{side.peak_rss_increase_bytes / 2**20:.0f})",
                     _fmt_masks(side)])
    for name, note in notes.items():
        if name not in sides:
            rows.append([name, "—", "—", "—", "—", "—", "—", note])
    for row in rows:
        if len(row) == 7:
            row.append(notes.get(row[0], ""))
    return ("concept generators, same crop and grid (median s; speed-up vs segment-anything's ViT-B generator)",
            ["side", "total s", "encoder s", "masks s", "speed-up", "peak RSS MB (rise)", "masks", "notes"], rows)


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
    engine = measure("engine", engine_run, opts.warmup, opts.repeat, opts.log)
    extra_sides = {name: measure(name, run, opts.warmup, opts.repeat, opts.log) for name, run in extra_runs.items()}
    reference = measure("reference", reference_run, opts.warmup, opts.repeat, opts.log)
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
    run_settings = {"photo": f"skimage.data.{opts.photo}", "crop": list(crop.shape[:2]), "sam": sam.description,
                    "sam_folder": str(sam.folder), "generator": settings.to_dict(), "load_seconds": sam.load_seconds}
    sides = {"engine": engine, **extra_sides, "reference": reference}
    tables = [_generators_table(sides, notes), table]
    scene = scene_sam_rows(opts)  # the trained scene SAM: real post-processing under the default filters
    extra["scene_sam"] = scene.extra
    if scene.table is not None:
        tables.append(scene.table)
    return _report(opts, {**sides, **scene.sides}, provider, run_settings, extra, tables)


def run_end_to_end(opts: BenchOptions) -> BenchReport:
    """Both stages: SAM concepts on the crop, then the explanation with them."""
    sam = sam_pair(opts)
    pair = classifier_pair(opts)
    crop = crop_for(load_photo(opts.photo), pair.engine.input_hw, pair.resize)
    settings = _sam_settings(opts)
    ref_settings = _reference_settings(opts)
    generator, ref_gen, _, _, _ = _concepts_sides(sam, crop, opts, settings)
    reference = ReferenceEAC(pair.torch, ref_settings)
    fallback = exact_regions(crop, opts.concepts_n)
    from ..engine.concepts import Frame

    frame = Frame.identity(crop.shape[:2])
    notes: dict[str, Any] = {}
    last: dict[str, Any] = {}
    min_concepts = 2

    def pick(masks: np.ndarray, side: str) -> np.ndarray:
        if len(masks) >= min_concepts:
            return masks
        notes[side] = (f"SAM kept {len(masks)} masks (random weights?); the explain stage used the "
                       f"{len(fallback)} SLIC masks instead")
        return fallback

    def engine_run() -> RunRecord:
        t0 = time.perf_counter()
        concepts = generator(crop, frame)
        t1 = time.perf_counter()
        masks = pick(concepts.masks, "engine")
        expl = _engine_explain(pair, crop, masks, opts)
        t2 = time.perf_counter()
        last["engine"] = expl
        stages = {"concepts": t1 - t0, **{k: float(expl.timings.get(k, 0.0)) for k in ("evaluations", "fit", "values")},
                  "total": t2 - t0}
        return RunRecord(stages=stages, counts={"sam masks": len(concepts), "concepts explained": len(masks),
                                                "evaluations": expl.num_evaluations})

    def reference_run() -> RunRecord:
        t0 = time.perf_counter()
        res_c = ref_gen.generate(crop)
        t1 = time.perf_counter()
        masks = pick(res_c.masks, "reference")
        res = reference.explain(crop, masks)
        t2 = time.perf_counter()
        last["reference"] = res
        stages = {"concepts": t1 - t0, **res.timings, "total": t2 - t0}
        return RunRecord(stages=stages, counts={"sam masks": len(res_c.masks), "concepts explained": len(masks),
                                                "evaluations": res.n_evaluations})

    engine = measure("engine", engine_run, opts.warmup, opts.repeat, opts.log)
    ref = measure("reference", reference_run, opts.warmup, opts.repeat, opts.log)
    run_settings = {"photo": f"skimage.data.{opts.photo}", "crop": list(crop.shape[:2]), "sam": sam.description,
                    "classifier": pair.description, "generator": settings.to_dict(),
                    "reference": ref_settings.to_dict(), "engine_method": ENGINE_METHOD, "notes": notes}
    tables = []
    if notes:
        tables.append(("notes", ["side", "note"], [[k, v] for k, v in notes.items()]))
    return _report(opts, {"engine": engine, "reference": ref}, pair.engine.provider, run_settings,
                   extra={"notes": notes}, tables=tables)


# --- fidelity ------------------------------------------------------------------------------------


@dataclass
class SceneModel:
    """The trained scene classifier for both sides."""

    folder: Path
    engine: Any
    torch: TorchClassifier
    size: int
    description: str


def trained_scene_model(opts: BenchOptions) -> SceneModel:
    """The small trained classifier: trained once with :mod:`eac.bench.train_demo`, cached."""
    import torch

    from ..engine.classifier import Classifier
    from . import train_demo

    if opts.classifier:
        folder = Path(opts.classifier)
        tc = torch_classifier_for_folder(folder)
        engine = Classifier.from_folder(folder, session_options=opts.session_options())
        return SceneModel(folder, engine, tc, int(engine.input_hw[0]), f"classifier folder {folder}")
    if opts.quick:
        size, n_train, epochs = QUICK.scene_size, QUICK.train_n, QUICK.train_epochs
    else:
        size, n_train, epochs = train_demo.DEMO_SIZE, 3000, 8
    key = models._fingerprint("scene", size, n_train, epochs, train_demo.DEMO_CHANNELS)
    root = models.cache_dir() / f"scene-cnn-{key}"
    state_path, folder = root / "state.pt", root / "classifier"
    model = train_demo.demo_cnn()
    if state_path.is_file() and (folder / "manifest.json").is_file():
        model.load_state_dict(torch.load(str(state_path), map_location="cpu", weights_only=True))
    else:
        opts.log(f"training the scene classifier ({n_train} scenes of {size}², {epochs} epochs; cached)...")
        result = train_demo.train(size=size, n_train=n_train, epochs=epochs, seed=0)
        model = result.model
        root.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        train_demo.export_folder(model, folder, size)
        torch.save(model.state_dict(), str(state_path))
    model.eval()
    engine = Classifier.from_folder(folder, session_options=opts.session_options())
    tc = TorchClassifier.from_module(model, train_demo.MEAN, train_demo.STD)
    desc = f"trained SceneCNN ({size}×{size}, {n_train} scenes, {epochs} epochs{', QUICK' if opts.quick else ''})"
    if not opts.quick and same_as_shipped_demo(engine, size):
        desc += "; identical outputs to the demo classifier shipped in eac/engine/data/demo"
    return SceneModel(folder, engine, tc, size, desc)


#: Scenes compared when checking the bench's scene model against the shipped demo.
DEMO_CHECK_SCENES = 4
DEMO_CHECK_ATOL = 1e-5


def same_as_shipped_demo(engine: Any, size: int) -> bool:
    """Whether ``engine`` gives the shipped demo classifier's logits on a few scenes."""
    from ..engine.classifier import Classifier
    from ..engine.errors import EacError
    from ..engine.scenes import make_scene

    demo = Path(__file__).resolve().parent.parent / "engine" / "data" / "demo"
    try:
        shipped = Classifier.from_folder(demo)
    except EacError:
        return False
    if tuple(shipped.input_hw) != (size, size) or shipped.num_classes != engine.num_classes:
        return False
    rng = np.random.default_rng(FIDELITY_SCENE_SEED)
    x = engine.normalize(np.stack([make_scene(rng, size).image for _ in range(DEMO_CHECK_SCENES)]))
    return bool(np.allclose(engine.run(x).logits, shipped.run(x).logits, atol=DEMO_CHECK_ATOL))


def fidelity_scenes(size: int, count: int, seed: int = FIDELITY_SCENE_SEED):
    """``count`` scenes with at most :data:`FIDELITY_MAX_N` concepts (drawn in order)."""
    from ..engine.scenes import make_scene, scene_concepts

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count * 20):
        scene = make_scene(rng, size)
        concepts = scene_concepts(scene, background_cells=FIDELITY_BACKGROUND_CELLS)
        if len(concepts) <= FIDELITY_MAX_N:
            out.append((scene, concepts))
        if len(out) == count:
            return out
    raise BenchError(f"could not draw {count} scenes with ≤ {FIDELITY_MAX_N} concepts")


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


def run_sanity(opts: BenchOptions) -> BenchReport:
    """Model-parameter and data randomisation sanity checks of every method (:mod:`eac.bench.sanity`)."""
    from .sanity import run_sanity as run

    return run(opts)


RUNNERS: dict[str, Callable[[BenchOptions], BenchReport]] = {
    "explain": run_explain,
    "concepts": run_concepts,
    "end-to-end": run_end_to_end,
    "fidelity": run_fidelity,
    "sanity": run_sanity,
}


def run_workload(opts: BenchOptions) -> BenchReport:
    """Run ``opts.workload`` and return its report."""
    if opts.workload not in RUNNERS and opts.workload not in ("peers", "serve"):
        raise BenchError(f"unknown workload {opts.workload!r}; choose from {', '.join(WORKLOADS)}")
    if opts.n_concepts is not None and opts.n_concepts < 1:
        raise BenchError(f"--n-concepts must be at least 1 (got {opts.n_concepts})")
    if opts.workload == "peers":  # eac vs captum, shap, lime, shapiq (bench/peers.py)
        from .peers import run_peers

        return run_peers(opts)
    if opts.workload == "serve":  # eac serve under concurrent clients (bench/serve.py)
        from .serve import run_serve

        return run_serve(opts)
    return RUNNERS[opts.workload](opts)
