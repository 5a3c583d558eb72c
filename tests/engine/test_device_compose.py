"""The composition graph and the device composer agree with the numpy composition."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from eac.engine.classifier import Classifier
from eac.engine.device_compose import COMPOSE_PATH, DeviceComposer, device_composer_for, supports_device_compose
from eac.export.compose import build_compose_model
from eac.kernels.compose import compose_batch, flatten_masks


def _case(rng, n=5, h=6, w=7, b=9):
    masks = rng.random((n, h, w)) < 0.3
    masks[0] = False  # an empty mask
    image = rng.normal(size=(3, h, w)).astype(np.float32)
    base = rng.normal(size=(3, h, w)).astype(np.float32)
    coalitions = rng.random((b, n)) < 0.5
    return masks, image, base, coalitions


def test_shipped_graph_is_the_built_graph():
    shipped = onnx.load(COMPOSE_PATH)
    assert shipped.graph == build_compose_model().graph  # regenerate with `python -m eac.export.compose`


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("shape", [(5, 6, 7, 9), (1, 3, 3, 1), (12, 16, 8, 4)])
def test_graph_equals_numpy_composition(shape, invert):
    rng = np.random.default_rng(sum(shape))
    masks, image, base, coalitions = _case(rng, *shape)
    session = ort.InferenceSession(str(COMPOSE_PATH), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {
        "coalitions": coalitions.astype(np.float32), "concept_masks": flatten_masks(masks).astype(np.float32),
        "image": image[None], "baseline": base[None], "invert": np.array([float(invert)], np.float32)})
    expected = compose_batch(image, base, flatten_masks(masks), coalitions, invert=invert)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_device_composer_matches_host_path(demo_classifier_folder):
    classifier = Classifier.from_folder(demo_classifier_folder)
    assert supports_device_compose(classifier)
    rng = np.random.default_rng(0)
    h, w = classifier.input_hw
    crop = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((4, h, w), bool)
    masks[0, : h // 2] = True
    masks[1, h // 2 :, : w // 2] = True
    masks[2, h // 3 : 2 * h // 3] = True  # overlaps the others
    pair = classifier.normalize(np.stack([crop, np.zeros_like(crop)]).astype(np.float32))
    coalitions = rng.random((6, 4)) < 0.5
    # On the CPU provider the composer is only used when forced (no bus to save).
    assert device_composer_for(classifier, pair[0], pair[1], flatten_masks(masks)) is None
    composer = device_composer_for(classifier, pair[0], pair[1], flatten_masks(masks), force=True)
    assert isinstance(composer, DeviceComposer)
    for invert in (False, True):
        logits, features = composer.run(coalitions, invert=invert)
        batch = compose_batch(pair[0], pair[1], flatten_masks(masks), coalitions, invert=invert)
        expected = classifier.run(batch)
        np.testing.assert_allclose(logits, expected.logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(features, expected.features, rtol=1e-5, atol=1e-5)


def test_evaluator_on_device_equals_numpy_path(demo_classifier_folder):
    from eac.engine.evaluator import MaskedEvaluator

    classifier = Classifier.from_folder(demo_classifier_folder)
    rng = np.random.default_rng(1)
    h, w = classifier.input_hw
    crop = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    masks = rng.random((5, h, w)) < 0.3
    coalitions = rng.random((11, 5)) < 0.5  # 11 = two full batches of 4 and a partial one
    host = MaskedEvaluator(classifier, crop, masks, batch_size=4, device_compose=False, record_features=True)
    device = MaskedEvaluator(classifier, crop, masks, batch_size=4, device_compose=True, record_features=True)
    assert device.on_device and not host.on_device
    for invert in (False, True):
        a, b = host.evaluate(coalitions, invert=invert), device.evaluate(coalitions, invert=invert)
        np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5)
    assert device.num_evaluations == host.num_evaluations == 22
