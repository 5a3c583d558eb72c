"""``eac bench concepts``: the trained scene SAM row (real post-processing under the default filters).

The random-weight ViT-B and EfficientViT-SAM rows measure encoder and decoder cost,
but with random weights the default filters keep no mask, so post-processing has
nothing to do. This row runs the SAM trained on generated scenes
(:mod:`eac.bench.train_sam`): the engine's generator on the shipped folder
(``eac/engine/data/demo_sam``) and segment-anything's ``SamAutomaticMaskGenerator``
on the checkpoint it was exported from (``bench/scene_sam/checkpoint.pth``), both
with the reference's default filters, on the same held-out generated scenes. It
reports per-stage time (encoder, decoder, post-processing), the masks kept and
their agreement (mean best IoU both ways). Beside them, the engine with the folder's own default
(its manifest recommends the coarse-to-fine prompt schedule): the decoder calls it saves and the masks it
keeps against segment-anything's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.demo import demo_sam_path
from ..engine.object_scenes import held_out_scenes
from .agreement import mask_agreement
from .harness import RunRecord, SideResult, measure
from .reference import ReferenceSamConcepts, SamReferenceSettings
from .train_sam import CHECKPOINT_NAME

#: The trained checkpoint, beside its training command.
SCENE_SAM_CHECKPOINT = Path(__file__).resolve().parent / "scene_sam" / CHECKPOINT_NAME
ENGINE_SIDE = "engine_scene_sam"
REFERENCE_SIDE = "reference_scene_sam"
#: The engine with the folder's recommended settings (coarse-to-fine prompts) instead of the reference grid.
DEFAULT_SIDE = "engine_scene_sam_folder_default"
#: Held-out generated scenes per timed run (full and --quick), and the quick run's grid side.
SCENES = 4
QUICK_SCENES = 1
QUICK_POINTS_PER_SIDE = 16
#: Stage names of both sides (the engine's preprocessing counts as encoder time, as in the reference's set_image).
STAGES = ("encoder", "decoder", "postprocess")


@dataclass
class SceneSamRows:
    """The row's sides (for the report), its JSON extra and its table; or why it was skipped."""

    sides: dict[str, SideResult] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    table: tuple | None = None


def scene_sam_rows(opts, folder: str | Path | None = None, checkpoint: str | Path | None = None) -> SceneSamRows:
    """Time the engine and segment-anything on the trained scene SAM (default filters).

    Parameters
    ----------
    opts : eac.bench.options.BenchOptions
        ``quick``, ``warmup``, ``repeat``, ``log`` and the session options are used.
    folder, checkpoint : path-like, optional
        The exported folder and its checkpoint (default: the shipped ones).
    """
    from ..engine.concepts import Frame
    from ..engine.sam import SamConceptGenerator
    from ..export.sam_loader import load_sam

    folder = Path(folder) if folder is not None else demo_sam_path()
    checkpoint = Path(checkpoint) if checkpoint is not None else SCENE_SAM_CHECKPOINT
    if not checkpoint.is_file() or not (folder / "manifest.json").is_file():
        reason = f"skipped: needs {checkpoint} and {folder} (a source checkout)"
        opts.log(f"trained scene SAM row {reason}")
        return SceneSamRows(extra={"skipped": reason})
    settings = SamReferenceSettings(points_per_side=QUICK_POINTS_PER_SIDE) if opts.quick else SamReferenceSettings()
    scenes = [image for image, _ in held_out_scenes(QUICK_SCENES if opts.quick else SCENES)]
    common = dict(session_options=opts.session_options(), points_per_side=settings.points_per_side,
                  points_per_batch=settings.points_per_batch, pred_iou_thresh=settings.pred_iou_thresh,
                  stability_score_thresh=settings.stability_score_thresh, box_nms_thresh=settings.box_nms_thresh)
    generator = SamConceptGenerator.from_folder(folder, prompt_schedule="grid", **common)
    folder_default = SamConceptGenerator.from_folder(folder, **common)
    reference = ReferenceSamConcepts(load_sam("scene", checkpoint), settings)
    last: dict[str, list[np.ndarray]] = {}

    def record(name: str, timings: list[dict[str, float]], masks: list[np.ndarray], prompts: int) -> RunRecord:
        last[name] = masks
        detail = {stage: sum(t.get(stage, 0.0) for t in timings) for stage in STAGES}
        rest = detail["decoder"] + detail["postprocess"]
        return RunRecord(stages={"encoder": detail["encoder"], "masks (decoder + post)": rest},
                         counts={"scenes": len(masks), "masks": int(sum(len(m) for m in masks)),
                                 "prompts decoded": prompts},
                         detail=detail)

    def engine_run_of(gen: SamConceptGenerator, name: str):
        def run() -> RunRecord:
            timings, masks, prompts = [], [], 0
            for image in scenes:
                concepts = gen(image, Frame.identity(image.shape[:2]))
                t = dict(concepts.timings)
                t["encoder"] = t.get("encoder", 0.0) + t.pop("preprocess", 0.0)
                timings.append(t)
                masks.append(concepts.masks)
                prompts += int(concepts.info["prompts"])
            return record(name, timings, masks, prompts)
        return run

    def reference_run() -> RunRecord:
        timings, masks = [], []
        for image in scenes:
            clock = time.perf_counter()
            result = reference.generate(image)
            result.timings.setdefault("total", time.perf_counter() - clock)
            timings.append(result.timings)
            masks.append(result.masks)
        return record(REFERENCE_SIDE, timings, masks, result.n_prompts * len(scenes))

    opts.log(f"trained scene SAM: {len(scenes)} held-out scene(s), {settings.points_per_side}² grid, default filters")
    sides = {ENGINE_SIDE: measure(ENGINE_SIDE, engine_run_of(generator, ENGINE_SIDE), opts.warmup, opts.repeat,
                                  opts.log),
             REFERENCE_SIDE: measure(REFERENCE_SIDE, reference_run, opts.warmup, opts.repeat, opts.log),
             DEFAULT_SIDE: measure(DEFAULT_SIDE, engine_run_of(folder_default, DEFAULT_SIDE), opts.warmup,
                                   opts.repeat, opts.log)}
    found = {name: _agreement(last[name], last[REFERENCE_SIDE]) for name in (ENGINE_SIDE, DEFAULT_SIDE)}
    agreement = {**found[ENGINE_SIDE], DEFAULT_SIDE: found[DEFAULT_SIDE],
                 "folder_default_settings": {"prompt_schedule": folder_default.settings.prompt_schedule,
                                             "skip_iou_thresh": folder_default.settings.skip_iou_thresh}}
    rows = []
    for name in (REFERENCE_SIDE, ENGINE_SIDE, DEFAULT_SIDE):
        side, kept = sides[name], found.get(name)
        rows.append([name] + [f"{side.detail[s].median:.3f}" for s in STAGES]
                    + [f"{side.stages['total'].median:.3f}", str(int(side.counts["prompts decoded"])),
                       str(int(side.counts["masks"])),
                       "" if kept is None else f"{kept['mean_best_iou_reference_in_engine']:.3f} / "
                                               f"{kept['mean_best_iou_engine_in_reference']:.3f}"])
    table = (f"trained scene SAM (model type scene, default filters 0.88/0.95/NMS 0.7, {settings.points_per_side}² "
             f"grid, {len(scenes)} held-out 128×128 scene(s); seconds summed over the scenes; "
             f"{DEFAULT_SIDE}: the folder's recommended {folder_default.settings.prompt_schedule} prompts)",
             ["side", "encoder s", "decoder s", "post-processing s", "total s", "prompts decoded", "masks kept",
              "mean best IoU ref→engine / engine→ref"], rows)
    extra = {"settings": settings.to_dict(), "scenes": len(scenes), "folder": str(folder),
             "checkpoint": str(checkpoint), "agreement": agreement}
    return SceneSamRows(sides=sides, extra=extra, table=table)


def _agreement(ours: list[np.ndarray], theirs: list[np.ndarray]) -> dict[str, Any]:
    """Masks kept per side over the scenes, and the scenes' mean of :func:`~eac.bench.agreement.mask_agreement`'s
    mean best IoU both ways (per-scene N×H×W masks)."""
    scenes = [mask_agreement(a, b) for a, b in zip(ours, theirs)]
    both_ways = ("mean_best_iou_reference_in_engine", "mean_best_iou_engine_in_reference")
    return {
        "engine_masks": int(sum(len(m) for m in ours)), "reference_masks": int(sum(len(m) for m in theirs)),
        "largest_count_difference_per_scene": int(max(abs(len(a) - len(b)) for a, b in zip(ours, theirs))),
        **{key: float(np.nanmean([s[key] for s in scenes])) for key in both_ways},
    }


__all__ = ["SCENE_SAM_CHECKPOINT", "SceneSamRows", "scene_sam_rows"]
