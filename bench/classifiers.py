"""The classifiers the timing workloads run, for both sides: the engine's folder and the PyTorch model.

``--classifier DIR`` benchmarks a folder whose PyTorch source the reference can rebuild; otherwise a
bench-built network (:mod:`eac.bench.models`): random weights, or — ``--weights scenes`` — the same
network with its final layer fitted on generated scenes (:mod:`eac.bench.scene_head`), so that its
prediction depends on the image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import models
from .harness import BenchError
from .options import QUICK, BenchOptions
from .reference import TorchClassifier


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
    """The same classifier for both sides.

    ``scenes`` is True for a bench network whose final layer was fitted on generated scenes
    (explain a generated scene with it); ``arch`` names the bench architecture (None for a folder).
    """

    folder: Path
    engine: Any  # eac.engine.classifier.Classifier
    torch: TorchClassifier
    resize: int | None
    description: str
    load_seconds: dict[str, float]
    scenes: bool = False
    arch: str | None = None
    record: dict[str, Any] | None = None


#: Bench architectures by size class, for full and QUICK runs.
RESNET_ARCH, QUICK_RESNET_ARCH = "resnet50", QUICK.classifier_arch
MOBILE_ARCH, QUICK_MOBILE_ARCH = "mobilenet_v3_large", "tiny_mobile"


def bench_arch(opts: BenchOptions, mobile: bool = False) -> str:
    """The bench architecture of a run: ResNet-50 (tiny ResNet when QUICK), or the mobile classifier."""
    if mobile:
        return QUICK_MOBILE_ARCH if opts.quick else MOBILE_ARCH
    return QUICK_RESNET_ARCH if opts.quick else RESNET_ARCH


def classifier_pair(opts: BenchOptions, arch: str | None = None) -> ClassifierPair:
    """The engine and PyTorch versions of a timing workload's classifier.

    ``--classifier DIR`` when given; otherwise the bench network ``arch`` (default ResNet-50,
    the tiny ResNet when QUICK) with random weights (``--weights random``) or with its final layer
    fitted on generated scenes (``--weights scenes``, :mod:`eac.bench.scene_head`).
    """
    from ..engine.classifier import Classifier

    t0 = time.perf_counter()
    scenes, record = False, None
    if opts.classifier:
        folder = Path(opts.classifier)
        description = f"classifier folder {folder}"
        arch = None
    else:
        arch = arch or bench_arch(opts)
        if opts.weights == "scenes":
            from .scene_head import FIT_SCENES, scene_head_classifier

            head = scene_head_classifier(arch, scenes=QUICK.head_scenes if opts.quick else FIT_SCENES, log=opts.log)
            folder, description, scenes, record = head.folder, head.description, True, head.record
        else:
            opts.log(f"exporting the bench {arch} classifier (random weights, cached)...")
            folder = models.export_bench_classifier(arch)
            description = f"bench {models.ARCH_NAMES[arch]}, random weights (seed {models.BENCH_SEED})"
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = Classifier.from_folder(folder, session_options=opts.session_options())
    engine_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    if opts.classifier or scenes:
        torch_model = torch_classifier_for_folder(folder)
    else:
        module = models.CLASSIFIERS[arch][1]()
        torch_model = TorchClassifier.from_module(module, models.IMAGENET_MEAN, models.IMAGENET_STD,
                                                  head=models.head_layer(arch))
    torch_load = time.perf_counter() - t0
    resize = _read_manifest(folder, "classifier")["preprocess"].get("resize")
    return ClassifierPair(folder, engine, torch_model, resize, description,
                          {"export_or_find": export_s, "engine": engine_load, "reference": torch_load},
                          scenes=scenes, arch=arch, record=record)
