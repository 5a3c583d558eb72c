"""Sparser SAM prompts, measured with the SAM trained on generated scenes.

Re-run (a few minutes on 2 CPU cores)::

    python -m eac.bench.study_prompts            # → bench/results/prompts.md and prompts.json

For each prompt schedule the engine's generator (:class:`eac.engine.sam.SamConceptGenerator`,
the reference's filters: predicted IoU 0.88, stability 0.95, box NMS 0.7) runs on
held-out generated scenes whose objects are known (seed streams training never
used: :func:`eac.engine.object_scenes.held_out_scenes`), and the study reports:

* **recall**: objects recovered by a concept of IoU ≥ 0.85 (:mod:`eac.bench.scene_metrics`);
* **concepts per scene**, near-duplicate fraction and what the leftovers are;
* **decoder runs per scene** (prompts decoded) and the fraction saved against the
  32×32 grid;
* **masks lost**: objects the 32×32 grid recovers and the schedule does not, and
  the grid's concepts with no concept of IoU ≥ 0.9 in the schedule's output.

Schedules: the reference 32×32 grid, 24×24 and 16×16 grids, and the 32×32 grid
decoded coarse-to-fine (``prompt_schedule="coarse-to-fine"``), skipping points inside
masks already kept with predicted IoU ≥ 0.92 or ≥ 0.88. A schedule may become the
default only if its recall is within :data:`DEFAULT_RECALL_MARGIN` of the 32×32 grid's.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.demo import demo_sam_path
from ..engine.object_scenes import held_out_scenes
from ..engine.sam import SamConceptGenerator
from . import scene_metrics as sm

#: The schedules measured: (name, generator settings). The first is the reference.
SCHEDULES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("grid 32×32 (reference)", {"points_per_side": 32, "prompt_schedule": "grid"}),
    ("grid 24×24", {"points_per_side": 24, "prompt_schedule": "grid"}),
    ("grid 16×16", {"points_per_side": 16, "prompt_schedule": "grid"}),
    ("coarse-to-fine 32×32, skip inside IoU ≥ 0.92", {"points_per_side": 32, "prompt_schedule": "coarse-to-fine",
                                                       "skip_iou_thresh": 0.92}),
    ("coarse-to-fine 32×32, skip inside IoU ≥ 0.88", {"points_per_side": 32, "prompt_schedule": "coarse-to-fine",
                                                       "skip_iou_thresh": 0.88}),
)
#: A schedule may replace the reference grid as the default only if its recall is at most this far below.
DEFAULT_RECALL_MARGIN = 0.01
#: Held-out scenes: object scenes and the demo's scenes (seed 0 of their streams).
DEFAULT_SCENES = 24
DEFAULT_DEMO_SCENES = 10
HERE = Path(__file__).resolve().parent
#: The checkout's (or installed package's) root: ``bench/`` and ``engine/`` lie in it.
CHECKOUT = HERE.parent
DEFAULT_OUT = HERE / "results"


def run_schedule(generator: SamConceptGenerator, scenes: list[tuple[np.ndarray, np.ndarray]]
                 ) -> tuple[list[sm.SceneScore], list[np.ndarray], list[int]]:
    """Concepts of every scene: scores, kept masks and prompts decoded per scene."""
    scores, masks, prompts = [], [], []
    for image, objects in scenes:
        concepts = generator.generate(image)
        scores.append(sm.score_scene(concepts.masks, objects))
        masks.append(concepts.masks)
        prompts.append(int(concepts.info["prompts"]))
    return scores, masks, prompts


def lost_against(reference: tuple[list[sm.SceneScore], list[np.ndarray]],
                 other: tuple[list[sm.SceneScore], list[np.ndarray]]) -> dict[str, float]:
    """What ``other`` misses that ``reference`` has: objects, and concepts (no IoU ≥ 0.9 match)."""
    objects_lost, concepts_lost, ref_concepts = 0, 0, 0
    for ref_score, other_score, ref_masks, other_masks in zip(reference[0], other[0], reference[1], other[1]):
        objects_lost += int(np.sum((ref_score.best_iou >= sm.RECALL_IOU) & (other_score.best_iou < sm.RECALL_IOU)))
        ref_concepts += len(ref_masks)
        if len(ref_masks) and len(other_masks):
            concepts_lost += int((sm.iou_matrix(ref_masks, other_masks).max(axis=1) < sm.DUPLICATE_IOU).sum())
        else:
            concepts_lost += len(ref_masks)
    n = max(len(reference[0]), 1)
    return {"objects_lost": objects_lost, "concepts_lost_per_scene": concepts_lost / n,
            "concepts_lost_fraction": concepts_lost / max(ref_concepts, 1)}


def shown_path(folder: str | Path) -> str:
    """``folder`` as a record shows it: relative to the checkout when inside it (records travel), else as given."""
    try:
        return Path(folder).resolve().relative_to(CHECKOUT).as_posix()
    except ValueError:
        return str(folder)


def study(sam_folder: str | Path, n_scenes: int, n_demo: int, log=print) -> dict[str, Any]:
    """Run every schedule on both scene sets; returns the JSON record."""
    sets = {"object scenes": held_out_scenes(n_scenes), "demo scenes": held_out_scenes(n_demo, demo=True)}
    record: dict[str, Any] = {
        "command": "python -m eac.bench.study_prompts", "sam": shown_path(sam_folder),
        "filters": {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "box_nms_thresh": 0.7},
        "recall_iou": sm.RECALL_IOU, "duplicate_iou": sm.DUPLICATE_IOU, "sets": {},
        "versions": {"python": platform.python_version()},
    }
    for set_name, scenes in sets.items():
        rows = []
        reference = None
        for name, settings in SCHEDULES:
            log(f"{set_name}: {name} on {len(scenes)} scenes")
            generator = SamConceptGenerator.from_folder(sam_folder, **settings)
            scores, masks, prompts = run_schedule(generator, scenes)
            summary = sm.summarise(scores)
            grid = settings["points_per_side"] ** 2
            row = {"schedule": name, "settings": settings, **summary,
                   "prompts_per_scene": float(np.mean(prompts)),
                   "decoder_runs_saved": 1.0 - float(np.mean(prompts)) / SCHEDULES[0][1]["points_per_side"] ** 2,
                   "grid_points": grid}
            if reference is None:
                reference = (scores, masks)
                row.update(objects_lost=0, concepts_lost_per_scene=0.0, concepts_lost_fraction=0.0)
            else:
                row.update(lost_against(reference, (scores, masks)))
            rows.append(row)
        base = rows[0]["recall"]
        for row in rows:
            row["recall_within_margin"] = bool(row["recall"] >= base - DEFAULT_RECALL_MARGIN)
        record["sets"][set_name] = rows
    return record


def _percent(value: float, interval: tuple[float, float] | None) -> str:
    """``96.3 % (93.6–98.5)``: a fraction and its interval, in per cent."""
    text = f"{100 * value:.1f} %"
    return text if interval is None else f"{text} ({100 * interval[0]:.1f}–{100 * interval[1]:.1f})"


def markdown(record: dict[str, Any]) -> str:
    """The study's tables."""
    lines = [
        "# Sparser SAM prompts with the trained scene SAM",
        "",
        f"`{record['command']}` — the engine's generator with the reference's filters (predicted IoU 0.88, "
        "stability 0.95, box NMS 0.7) on held-out generated scenes (seed streams training never used). "
        f"An object is recovered by a concept of IoU ≥ {record['recall_iou']}; near-duplicates are concepts with "
        f"IoU ≥ {record['duplicate_iou']} with another concept; *lost* = against the 32×32 grid (objects it "
        "recovers and the schedule does not; its concepts with no IoU ≥ 0.9 match in the schedule's output). "
        f"In brackets: {100 * sm.INTERVAL_LEVEL:.0f} % intervals, resampling scenes "
        f"({sm.BOOTSTRAP_RESAMPLES} resamples) and spanning the exact binomial interval of the totals.",
        "",
    ]
    for set_name, rows in record["sets"].items():
        lines += [f"## {set_name} ({rows[0]['scenes']} scenes, {rows[0]['objects']} objects)", "",
                  "| schedule | recall | concepts / scene | near-duplicates | decoder runs / scene | saved | "
                  "objects lost | concepts lost / scene | recall within 1 point |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append(f"| {r['schedule']} | {_percent(r['recall'], r.get('recall_interval'))} | "
                         f"{r['concepts_per_scene']:.2f} | "
                         f"{_percent(r['duplicate_fraction'], r.get('duplicate_interval'))} | "
                         f"{r['prompts_per_scene']:.0f} | "
                         f"{100 * r['decoder_runs_saved']:.0f} % | {r['objects_lost']} | "
                         f"{r['concepts_lost_per_scene']:.2f} | {'yes' if r['recall_within_margin'] else 'no'} |")
        lines += ["", "Leftover concepts (recovering no object) per scene:", "",
                  "| schedule | " + " | ".join(sm.LEFTOVER_KINDS) + " |",
                  "| --- |" + " --- |" * len(sm.LEFTOVER_KINDS)]
        for r in rows:
            lines.append(f"| {r['schedule']} | " + " | ".join(f"{r['leftovers_per_scene'][k]:.2f}"
                                                            for k in sm.LEFTOVER_KINDS) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", default=str(demo_sam_path()), help="SAM folder (default: the shipped scene SAM)")
    parser.add_argument("--scenes", type=int, default=DEFAULT_SCENES, help="held-out object scenes")
    parser.add_argument("--demo-scenes", type=int, default=DEFAULT_DEMO_SCENES, help="held-out demo scenes")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for prompts.md and prompts.json")
    args = parser.parse_args(argv)
    record = study(args.sam, args.scenes, args.demo_scenes, log=lambda m: print(m, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompts.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "prompts.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
