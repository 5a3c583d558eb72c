"""``eac demo``: the main job on a machine with nothing downloaded.

It explains a generated scene (:mod:`eac.engine.scenes`) with the small scene
classifier shipped inside the package (:func:`eac.engine.demo.demo_classifier_path`).
Concepts come from the small SAM shipped beside it (:func:`eac.engine.demo.demo_sam_path`,
trained on generated scenes), with segment-anything's default filters; ``--concepts
superpixels`` uses SLIC superpixels instead and ``--sam DIR`` another SAM folder.
The class of a scene is the shape of its red object, so the right top concept is
known: the demo prints how much of each top concept lies on the red shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from ...kernels.prompts import PROMPT_SCHEDULES
from ..methods import method_names
from .options import add_session_args, model_help, non_negative_int, resolve_models, runtime_from_args
from .report import plot_notice, summary_lines

#: ``--concepts``: SAM's automatic masks (the default) or SLIC superpixels.
CONCEPT_SOURCES = ("sam", "superpixels")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="explain a generated scene with the classifier shipped in the package")
    p.add_argument("--out", default="eac-demo", help="output folder (default: %(default)s)")
    p.add_argument("--concepts", choices=CONCEPT_SOURCES, default=CONCEPT_SOURCES[0],
                   help="sam: the SAM shipped in the package (or --sam DIR); superpixels: SLIC superpixels")
    p.add_argument("--sam", default=None, help=model_help("sam", "use this SAM folder instead of the shipped one"))
    p.add_argument("--prompt-schedule", choices=PROMPT_SCHEDULES, default=None,
                   help="SAM prompts: coarse-to-fine (what the shipped SAM recommends) or grid (the reference: "
                        "every point of the 32×32 grid); default: the SAM folder's recommendation, else grid")
    p.add_argument("--method", default="eac", choices=method_names())
    p.add_argument("--seed", type=non_negative_int, default=0, help="which generated scene")
    p.add_argument("--image", default=None, help="explain this image instead of a generated scene")
    p.add_argument("--json", action="store_true", help="print the result as JSON (the shape of `eac explain --json`)")
    add_session_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..classifier import Classifier
    from ..demo import DEMO_SEGMENTS, demo_classifier_path, demo_sam_path
    from ..errors import ConfigError
    from ..explainer import Explainer
    from ..explanation import check_output_folder
    from ..images import load_image
    from ..metrics import add_metrics
    from ..render.values import plot_available
    from ..scenes import SHAPES, make_scene
    from ..sources import SuperpixelSource

    if args.sam and args.concepts == "superpixels":
        raise ConfigError("--sam names a SAM folder, but --concepts superpixels uses none; drop one of them")
    if args.prompt_schedule and args.concepts == "superpixels":
        raise ConfigError("--prompt-schedule sets SAM's prompts, but --concepts superpixels uses no SAM; drop one")
    resolve_models(args)
    out = Path(args.out)
    check_output_folder(out)
    runtime = runtime_from_args(args)
    classifier = Classifier.from_folder(demo_classifier_path(), session_options=runtime)
    key_mask = None
    if args.image:
        image = load_image(args.image)
        title = str(args.image)
    else:
        size = int(classifier.input_hw[0])
        scene = make_scene(np.random.default_rng(args.seed), size)
        image, key_mask = scene.image, scene.key_mask
        title = f"generated scene {args.seed}: a red {SHAPES[scene.label]} among distractors"
    if args.concepts == "sam":
        from ..sam import SamConceptGenerator

        schedule = {} if args.prompt_schedule is None else {"prompt_schedule": args.prompt_schedule}
        source = SamConceptGenerator.from_folder(args.sam or demo_sam_path(), session_options=runtime, **schedule)
    else:
        source = SuperpixelSource(DEMO_SEGMENTS)
    explanation = Explainer(classifier, method=args.method, seed=args.seed).explain(image, source)
    if explanation.num_concepts:
        add_metrics(explanation, classifier)
    if key_mask is not None and key_mask.shape != explanation.masks.shape[1:]:
        key_mask = None  # the classifier resized the scene: its mask no longer lines up with the concepts
    explanation.info["image"] = title
    explanation.save(out)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if ok:
        buf.tofile(str(out / "input.png"))
    annotate = None
    if key_mask is not None:
        def annotate(i: int) -> str:
            mask = explanation.masks[i]
            return f", {100 * (mask & key_mask).sum() / max(1, mask.sum()):.0f}% on the red shape"
    log = sys.stderr if args.json else sys.stdout
    print(title, file=log)
    for line in summary_lines(explanation, annotate=annotate):
        print(line, file=log)
    pictures = "overlay.png, heatmap.png" + (", values.png" if plot_available() else "")
    print(f"wrote {out}/explanation.json, {pictures} and the top concepts' cut-outs", file=log)
    plot_notice(log)
    if args.json:
        record = {**explanation.to_dict(), "image": title, "output_folder": str(out)}
        json.dump({"results": [record], "failures": []}, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    return 0
