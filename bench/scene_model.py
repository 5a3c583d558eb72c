"""The small trained scene classifier (:mod:`eac.bench.train_demo`) and the scenes it is measured on.

Shared by the fidelity and peers workloads: exact Shapley values by enumeration are the ground
truth there, so the scenes keep N ≤ :data:`FIDELITY_MAX_N` concepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import models
from .classifiers import torch_classifier_for_folder
from .harness import BenchError
from .options import QUICK, BenchOptions
from .reference import TorchClassifier

#: Exact Shapley enumeration limit of the fidelity workload.
FIDELITY_MAX_N = 12
#: Scene background tiles per side in the fidelity workload (objects + tiles ≤ 12 concepts).
FIDELITY_BACKGROUND_CELLS = 3
FIDELITY_SCENES = 8
#: Scene generator seed of the fidelity workload (scenes drawn in order; those with N > 12 skipped).
FIDELITY_SCENE_SEED = 1234


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
