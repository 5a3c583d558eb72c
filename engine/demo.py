"""The demo's shipped classifier and settings (the ``eac demo`` command lives in :mod:`eac.engine.cli.demo`).

The shipped classifier (``engine/data/demo``) is a small CNN trained on the
generated scenes of :mod:`eac.engine.scenes` by
``python -m eac.bench.train_demo --out engine/data/demo``.
"""

from __future__ import annotations

from pathlib import Path

#: Superpixels asked for on the 128×128 demo scene.
DEMO_SEGMENTS = 24


def demo_classifier_path() -> Path:
    """Folder of the shipped demo classifier."""
    return Path(__file__).resolve().parent / "data" / "demo"


def demo_sam_path() -> Path:
    """Folder of the shipped SAM trained on the generated scenes (``engine/data/demo_sam``)."""
    return Path(__file__).resolve().parent / "data" / "demo_sam"
