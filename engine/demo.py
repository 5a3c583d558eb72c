"""``eac demo``: the main job on a machine with nothing downloaded.

It explains a generated scene (:mod:`eac.engine.scenes`) with the small scene
classifier shipped inside the package (``engine/data/demo``, trained by
``python -m eac.bench.train_demo --out engine/data/demo``). The class of a
scene is the shape of its red object, so the right top concept is known: the
demo prints how much of each top concept lies on the red shape. Concepts come
from SLIC superpixels (no SAM needed) or from SAM when ``--sam DIR`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np


#: Superpixels asked for on the 128×128 demo scene.
DEMO_SEGMENTS = 24


def demo_classifier_path() -> Path:
    """Folder of the shipped demo classifier."""
    return Path(__file__).resolve().parent / "data" / "demo"


def demo_command(args: argparse.Namespace) -> int:
    from .classifier import Classifier
    from .cli import session_options_from_args
    from .explain import Explainer
    from .images import load_image
    from .run import add_metrics, summary_lines
    from .scenes import SHAPES, make_scene
    from .sources import SuperpixelSource

    options = session_options_from_args(args)
    classifier = Classifier.from_folder(demo_classifier_path(), session_options=options)
    key_mask = None
    if args.image:
        image = load_image(args.image)
        title = str(args.image)
    else:
        size = int(classifier.input_hw[0])
        scene = make_scene(np.random.default_rng(args.seed), size)
        image, key_mask = scene.image, scene.key_mask
        title = f"generated scene {args.seed}: a red {SHAPES[scene.label]} among distractors"
    if args.sam:
        from .sam import SamConceptGenerator

        source = SamConceptGenerator.from_folder(args.sam, session_options=options)
    else:
        source = SuperpixelSource(DEMO_SEGMENTS)
    explainer = Explainer(classifier, method=args.method, seed=args.seed)
    explanation = explainer.explain(image, source)
    add_metrics(explanation, classifier)
    if key_mask is not None and key_mask.shape != explanation.masks.shape[1:]:
        key_mask = None  # the classifier resized the scene: its mask no longer lines up with the concepts
    out = Path(args.out)
    explanation.info["image"] = title
    explanation.save(out)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if ok:
        buf.tofile(str(out / "input.png"))
    log = sys.stderr if args.json else sys.stdout
    print(title, file=log)
    for line in summary_lines(explanation, key_mask=key_mask):
        print(line, file=log)
    print(f"wrote {out}/explanation.json, {out}/overlay.png and the top concepts' cut-outs", file=log)
    if args.json:
        json.dump(explanation.to_dict(), sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    return 0
