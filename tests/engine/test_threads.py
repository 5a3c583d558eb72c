"""One engine object serves several threads: concurrent results equal sequential ones."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from eac.engine.classifier import Classifier
from eac.engine.explainer import Explainer
from eac.engine.scenes import make_scene
from eac.engine.sources import SuperpixelSource

THREADS = 4


def test_concurrent_explanations_equal_sequential(demo_classifier_folder):
    classifier = Classifier.from_folder(demo_classifier_folder)
    explainer = Explainer(classifier, method="eac", seed=3)
    source = SuperpixelSource(12)
    images = [make_scene(np.random.default_rng(200 + i), 128).image for i in range(THREADS)]
    sequential = [explainer.explain(im, source) for im in images]
    with ThreadPoolExecutor(THREADS) as pool:
        concurrent = list(pool.map(lambda im: explainer.explain(im, source), images))
    for a, b in zip(sequential, concurrent):
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.values, b.values, rtol=0, atol=1e-9)
        assert a.targets == b.targets and a.num_evaluations == b.num_evaluations
