"""``eac bench end-to-end``: one image from file to saved explanation, per stage, for several pipelines.

Rows (each a side of one run; with ``--repeat`` > 1 the rows alternate):

``engine_l0_resnet50``
    EfficientViT-SAM-L0 concepts + the ResNet-50-sized classifier (target ≤ 15 s on two CPU cores).
``engine_l0_mobile``
    EfficientViT-SAM-L0 + MobileNetV3-Large (0.22 GMAC, :mod:`eac.bench.mobilenet`; target ≤ 6 s).
``engine_vitb_resnet50``
    SAM ViT-B + the ResNet-50-sized classifier.
``reference``
    The reference pipeline: segment-anything's ``SamAutomaticMaskGenerator`` on the same ViT-B
    weights, then the reference explain stage (:mod:`eac.bench.reference`) on the PyTorch ResNet-50.

Stages of one run: ``load`` (read and decode the image file, resize and centre-crop it as the
classifier's preprocessing says), ``concepts`` (the SAM generator on the crop), ``evaluations``,
``fit`` and ``values`` (eac's explain stage, as it times them), ``explain other`` (the rest of the
explain call: the full-crop evaluation's set-up, validation, assembling the result), ``write``
(:meth:`Explanation.save <eac.engine.explanation.Explanation.save>`: JSON, masks, overlay,
cut-outs) and ``total``. The reference writes nothing (it has no output format), so it has no
``write`` stage; its total is the smaller for it.

Concepts. The bench's SAMs have random weights (none can be downloaded), and a random SAM keeps
no mask under the reference's filters (predicted IoU ≥ 0.88, stability ≥ 0.95). So a SAM with
random weights runs with those two filters off — every candidate of the grid is scored and goes
to box NMS at 0.7 as usual, so the decoder and the post-processing do at least a real image's
work — and the :data:`MAX_CONCEPTS` masks with the highest predicted IoU are explained. Random
masks are large and overlap, so NMS often leaves fewer than :data:`MAX_CONCEPTS`; the explain
stage then gets exactly :data:`MAX_CONCEPTS` SLIC regions of the crop instead (computed once,
before timing; the report says so), so every row explains the N ≈ 32 of real images. A SAM from a
checkpoint (``--sam`` / ``--sam-checkpoint``) keeps the reference's filters and its own masks
(at least :data:`MIN_CONCEPTS`), capped at :data:`MAX_CONCEPTS`. Both sides follow the same rule.
The classifier is the one ``--weights`` chooses (default: final layer fitted on generated scenes;
the image is then a generated scene). QUICK runs use the tiny SAM for both SAM rows and the
reduced classifiers.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.concepts import Concepts
from ..engine.explainer import Explainer
from ..engine.images import load_image
from . import models
from .classifiers import ClassifierPair, bench_arch, classifier_pair
from .harness import (
    LOAD_HEADER,
    BenchReport,
    RunRecord,
    SideResult,
    machine_info,
    measure_sides,
    ratios,
    side_load,
)
from .options import QUICK, SCENE_PHOTO, BenchOptions
from .reference import ReferenceEAC, ReferenceSamConcepts, ReferenceSettings, SamReferenceSettings
from .workloads import _engine_sam, crop_for, exact_regions, load_photo, sam_pair

#: Concepts explained per image: the highest-scored SAM masks, at most this many (N ≈ 32, as on real images).
MAX_CONCEPTS = 32
#: Fewest masks a SAM from a checkpoint must keep; below it (or below MAX_CONCEPTS for a random SAM) the
#: explain stage uses exactly MAX_CONCEPTS SLIC regions (noted in the report).
MIN_CONCEPTS = 2
#: Explanation method of the engine rows.
ENGINE_METHOD = "eac"
#: Row names.
L0_RESNET = "engine_l0_resnet50"
L0_MOBILE = "engine_l0_mobile"
VITB_RESNET = "engine_vitb_resnet50"
REFERENCE = "reference"
#: Targets of issue 18 (quiet machine, two CPU cores), shown beside the rows they apply to.
TARGETS = {L0_RESNET: "≤ 15 s", L0_MOBILE: "≤ 6 s"}
#: Stages in print order.
STAGES = ("load", "concepts", "evaluations", "fit", "values", "explain other", "write")
EFFICIENTVIT_TYPE = "efficientvit_l0"


@dataclass
class SamRow:
    """One SAM of the run: its folder, the reference settings it runs with, how it was chosen."""

    folder: Path
    settings: SamReferenceSettings
    description: str
    random: bool

    @property
    def fewest_masks(self) -> int:
        """Masks it must keep for the explain stage to use them (else SLIC regions)."""
        return MAX_CONCEPTS if self.random else MIN_CONCEPTS


def concept_settings(random_weights: bool, points_per_side: int) -> SamReferenceSettings:
    """Generator settings of a SAM: the reference's, with the IoU and stability filters off for random weights."""
    base = SamReferenceSettings(points_per_side=points_per_side)
    if random_weights:
        return replace(base, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    return base


def cap_masks(masks: np.ndarray, scores: np.ndarray | None, cap: int = MAX_CONCEPTS) -> np.ndarray:
    """The ``cap`` masks with the highest scores (stable order; all of them when there are fewer)."""
    if len(masks) <= cap:
        return masks
    order = np.arange(len(masks)) if scores is None else np.argsort(-np.asarray(scores), kind="stable")
    return masks[np.sort(order[:cap])]


def _sams(opts: BenchOptions) -> tuple[dict[str, SamRow], Any]:
    """The ViT-B (engine folder + PyTorch model for the reference) and EfficientViT-SAM-L0 rows' SAMs."""
    pps = QUICK.points_per_side if opts.quick else SamReferenceSettings().points_per_side
    vitb = sam_pair(opts)
    random_vitb = not (opts.sam or opts.sam_checkpoint)
    rows = {"vitb": SamRow(vitb.folder, concept_settings(random_vitb, pps), vitb.description, random_vitb)}
    if opts.quick:
        rows["l0"] = SamRow(vitb.folder, rows["vitb"].settings, f"{vitb.description} (QUICK: in place of L0)",
                            random_vitb)
    else:
        opts.log("exporting EfficientViT-SAM-L0 (random weights, cached)...")
        folder = models.export_bench_efficientvit_sam(EFFICIENTVIT_TYPE)
        rows["l0"] = SamRow(folder, concept_settings(True, pps),
                            f"EfficientViT-SAM-L0 (512 input), random weights (seed {models.BENCH_SEED})", True)
    return rows, vitb


def _explained(found_masks: np.ndarray, scores: np.ndarray | None, sam: SamRow, fallback: np.ndarray,
               notes: dict[str, str], name: str) -> np.ndarray:
    """The masks a row explains: SAM's best :data:`MAX_CONCEPTS`, or the SLIC regions when SAM kept too few."""
    if len(found_masks) >= sam.fewest_masks:
        return cap_masks(found_masks, scores)
    notes[name] = (f"SAM kept {len(found_masks)} masks (fewer than {sam.fewest_masks}); the explain stage used "
                   f"{len(fallback)} SLIC regions of the crop (computed before timing)")
    return fallback


def _engine_row(sam: SamRow, pair: ClassifierPair, image_path: Path, out_root: Path, opts: BenchOptions,
                fallback: np.ndarray, notes: dict[str, str], name: str, last: dict[str, Any]):
    """One engine row: file → crop → SAM concepts → eac → saved folder, each stage timed."""
    generator = _engine_sam(sam.folder, sam.settings, opts)
    explainer = Explainer(pair.engine, method=ENGINE_METHOD, seed=opts.seed)
    counter = itertools.count()

    def run() -> RunRecord:
        t0 = time.perf_counter()
        crop, frame = pair.engine.crop(load_image(image_path))
        t1 = time.perf_counter()
        found = generator(crop, frame)
        t2 = time.perf_counter()
        masks = _explained(found.masks, found.scores, sam, fallback, notes, name)
        concepts = Concepts(masks, None, "slic" if masks is fallback else "sam", frame)
        expl = explainer.explain(crop, concepts)
        t3 = time.perf_counter()
        expl.save(out_root / f"{name}-{next(counter)}")
        t4 = time.perf_counter()
        timed = {k: float(expl.timings.get(k, 0.0)) for k in ("evaluations", "fit", "values")}
        stages = {"load": t1 - t0, "concepts": t2 - t1, **timed,
                  "explain other": max(t3 - t2 - sum(timed.values()), 0.0), "write": t4 - t3, "total": t4 - t0}
        last[name] = expl
        return RunRecord(stages=stages, counts={"sam masks": len(found), "concepts explained": len(masks),
                                                "evaluations": expl.num_evaluations},
                         info={"target": expl.target, "probability": expl.probability},
                         detail={f"concepts: {k}": float(v) for k, v in found.timings.items()})

    return run


def _reference_row(sam_torch: Any, sam: SamRow, pair: ClassifierPair, image_path: Path,
                   ref_settings: ReferenceSettings, fallback: np.ndarray, notes: dict[str, str],
                   last: dict[str, Any]):
    """The reference row: the image file read with OpenCV, segment-anything's generator, the reference EAC."""
    import cv2

    generator = ReferenceSamConcepts(sam_torch, sam.settings)
    reference = ReferenceEAC(pair.torch, ref_settings)

    def run() -> RunRecord:
        t0 = time.perf_counter()
        image = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        crop = crop_for(image, pair.engine.input_hw, pair.resize)
        t1 = time.perf_counter()
        found = generator.generate(crop)
        t2 = time.perf_counter()
        masks = _explained(found.masks, found.scores, sam, fallback, notes, REFERENCE)
        res = reference.explain(crop, masks)
        t3 = time.perf_counter()
        timed = {k: float(res.timings[k]) for k in ("evaluations", "fit", "values")}
        stages = {"load": t1 - t0, "concepts": t2 - t1, **timed,
                  "explain other": max(t3 - t2 - sum(timed.values()), 0.0), "total": t3 - t0}
        last[REFERENCE] = res
        return RunRecord(stages=stages, counts={"sam masks": len(found.masks), "concepts explained": len(masks),
                                                "evaluations": res.n_evaluations},
                         info={"target": res.target, "probability": res.probability},
                         detail={f"concepts: {k}": float(v) for k, v in found.timings.items() if k != "total"})

    return run


def _rows_table(sides: dict[str, SideResult], descriptions: dict[str, str]) -> tuple:
    """Every row's median seconds per stage, its total against the reference's, and its target."""
    ref_total = sides[REFERENCE].stages["total"].median if REFERENCE in sides else float("nan")
    rows = []
    for name, side in sides.items():
        cells = [name]
        for stage in STAGES:
            stat = side.stages.get(stage)
            cells.append("—" if stat is None else f"{stat.median:.2f}")
        total = side.stages["total"].median
        cells.append(f"{total:.2f}")
        cells.append("1.0×" if name == REFERENCE else f"{ref_total / total:.1f}×")
        cells.append(side_load(side))
        cells.append(TARGETS.get(name, ""))
        cells.append(f"{side.counts.get('sam masks', 0):.0f} → {side.counts.get('concepts explained', 0):.0f}")
        cells.append(f"{side.counts.get('evaluations', 0):.0f}")
        cells.append(descriptions.get(name, ""))
        rows.append(cells)
    header = ["row", *STAGES, "total", "speed-up", LOAD_HEADER, "target", "SAM masks → explained", "evaluations",
              "pipeline"]
    return ("one image end to end: median seconds per stage (file → saved explanation)", header, rows)


def run_end_to_end(opts: BenchOptions) -> BenchReport:
    """One image from file to saved explanation for each pipeline row; see the module docstring."""
    import cv2

    sams, vitb = _sams(opts)
    resnet = classifier_pair(opts)
    mobile = classifier_pair(opts, bench_arch(opts, mobile=True))
    photo = opts.photo_for(resnet.scenes)
    ref_settings = replace(QUICK.reference if opts.quick else ReferenceSettings(), seed=opts.seed)
    notes: dict[str, str] = {}
    last: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="eac-bench-e2e-") as tmp:
        image_path = Path(tmp) / "image.png"
        cv2.imwrite(str(image_path), cv2.cvtColor(load_photo(photo), cv2.COLOR_RGB2BGR))
        out_root = Path(tmp) / "out"
        crop, _ = resnet.engine.crop(load_image(image_path))
        fallback = exact_regions(crop, MAX_CONCEPTS)
        descriptions = {
            L0_RESNET: f"{sams['l0'].description} + {resnet.description}",
            L0_MOBILE: f"{sams['l0'].description} + {mobile.description}",
            VITB_RESNET: f"{sams['vitb'].description} + {resnet.description}",
            REFERENCE: f"segment-anything generator, {sams['vitb'].description} + PyTorch reference EAC on the "
                       "same ResNet-50-sized classifier",
        }
        runs = {
            L0_RESNET: _engine_row(sams["l0"], resnet, image_path, out_root, opts, fallback, notes, L0_RESNET, last),
            L0_MOBILE: _engine_row(sams["l0"], mobile, image_path, out_root, opts, fallback, notes, L0_MOBILE, last),
            VITB_RESNET: _engine_row(sams["vitb"], resnet, image_path, out_root, opts, fallback, notes, VITB_RESNET,
                                     last),
            REFERENCE: _reference_row(vitb.torch, sams["vitb"], resnet, image_path, ref_settings, fallback, notes,
                                      last),
        }
        measured = measure_sides(runs, opts.warmup, opts.repeat, opts.log)
    tables = [_rows_table(measured, descriptions)]
    if notes:
        tables.append(("notes", ["row", "note"], [[k, v] for k, v in notes.items()]))
    settings = {
        "photo": photo if photo != SCENE_PHOTO else "generated scene (eac.bench.workloads.EXPLAIN_SCENE_SEED)",
        "image_file": "PNG written once before timing, read by every run",
        "sams": {k: {"folder": str(v.folder), "settings": v.settings.to_dict(), "description": v.description}
                 for k, v in sams.items()},
        "max_concepts": MAX_CONCEPTS, "classifiers": {"resnet": resnet.description, "mobile": mobile.description},
        "classifier_records": {"resnet": resnet.record, "mobile": mobile.record},
        "reference": ref_settings.to_dict(), "engine_method": ENGINE_METHOD, "rows": descriptions, "notes": notes,
        "onnxruntime_settings": opts.ort,
    }
    return BenchReport(
        workload=opts.workload, quick=opts.quick, command=opts.command, sides=measured,
        ratios=ratios(measured[L0_RESNET], measured[REFERENCE]), machine=machine_info(opts.threads),
        provider=resnet.engine.provider, settings=settings,
        extra={"per_row_totals": {k: v.stages["total"].median for k, v in measured.items()}, "notes": notes},
        tables=tables, headline=(L0_RESNET, REFERENCE),
    )
