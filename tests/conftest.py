"""Shared fixtures.

``trained_classifier``: a small CNN trained, inside the test session, on the
synthetic scenes of :mod:`eac.engine.scenes` (class = shape of the red object),
exported to an eac classifier folder. The right explanation of any scene is
known: the concept covering the red shape.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

#: The checkout's root, which pytest puts on sys.path because ``tests/`` is a package.
CHECKOUT_ROOT = Path(__file__).resolve().parents[1]
#: Hugging Face's hub-kernels distribution (transformers >= 5.25 depends on it), named like eac's ``kernels/``.
HF_KERNELS_PACKAGE = "kernels"


def _import_the_installed_kernels_package() -> None:
    """Bind the name ``kernels`` to the installed distribution, not to this checkout's ``kernels/`` folder.

    With the checkout's root on sys.path, ``import kernels`` (as transformers does when the distribution is
    installed) would load eac's numeric folder; outside a checkout it loads the distribution, as it should. Import
    the distribution once with the root left out, so that later imports find it in ``sys.modules``. Without the
    distribution installed nothing is imported (transformers then does not import it either).
    """
    try:
        importlib.metadata.version(HF_KERNELS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return
    saved = list(sys.path)
    sys.path[:] = [entry for entry in saved if Path(entry or ".").resolve() != CHECKOUT_ROOT]
    try:
        importlib.import_module(HF_KERNELS_PACKAGE)
    finally:
        sys.path[:] = saved


_import_the_installed_kernels_package()

#: Scene side of the fixture classifier (smaller than the shipped demo, to train fast).
FIXTURE_SIZE = 64
FIXTURE_TRAIN_IMAGES = 1500
FIXTURE_EPOCHS = 8
FIXTURE_LR = 5e-3
FIXTURE_SEED = 0
#: The fixture is only useful if it learned the task; below this the tests stop early.
MIN_FIXTURE_ACCURACY = 0.9


@dataclass(frozen=True)
class TrainedClassifier:
    """The trained fixture: its folder, scene size and held-out accuracies."""

    folder: Path
    size: int
    accuracy: float
    masked_accuracy: float

    def scene(self, seed: int, label: int | None = None):
        """A scene the classifier has not seen (training uses seed 0's stream)."""
        from eac.engine.scenes import make_scene

        return make_scene(np.random.default_rng(10_000 + seed), self.size, label=label)


@pytest.fixture(scope="session")
def trained_classifier(tmp_path_factory) -> TrainedClassifier:
    pytest.importorskip("torch")
    from eac.bench.train_demo import SMALL_CHANNELS, export_folder, train

    result = train(size=FIXTURE_SIZE, n_train=FIXTURE_TRAIN_IMAGES, epochs=FIXTURE_EPOCHS, lr=FIXTURE_LR,
                   seed=FIXTURE_SEED, channels=SMALL_CHANNELS)
    if result.accuracy < MIN_FIXTURE_ACCURACY or result.masked_accuracy < MIN_FIXTURE_ACCURACY:
        pytest.fail(f"fixture classifier did not learn the scenes (accuracy {result.accuracy:.3f}, "
                    f"masked {result.masked_accuracy:.3f})")
    folder = tmp_path_factory.mktemp("trained") / "classifier"
    export_folder(result.model, folder, FIXTURE_SIZE)
    return TrainedClassifier(folder, FIXTURE_SIZE, result.accuracy, result.masked_accuracy)


@pytest.fixture(scope="session")
def demo_classifier_folder() -> Path:
    """The classifier folder shipped inside the package (engine/data/demo)."""
    from eac.engine.demo import demo_classifier_path

    return demo_classifier_path()


@pytest.fixture
def chromium():
    """A headless Chromium (tests/browser.py); skipped with the reason when none can be launched."""
    from .browser import launch

    with launch() as browser:
        yield browser
