"""CAM and SeCAM: numpy kernels, ground truth against torch (CAM, Grad-CAM), and the methods.

Ground truth: for a network ending in global average pooling and one linear
layer, Grad-CAM's channel weights are the gradients of the class logit averaged
over the feature grid, i.e. W[y, c] / (h·w), so Grad-CAM is CAM times the
positive factor 1 / (h·w) (before and after its ReLU). Both are computed here
with torch on the same small CNN and compared with :mod:`eac.kernels.cam`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from eac.engine.errors import ExplainError
from eac.engine.evaluator import MaskedEvaluator
from eac.engine.methods.base import MethodInput
from eac.engine.methods.cam import ClassActivationMap
from eac.engine.methods.secam import SegmentClassActivationMap
from eac.kernels.cam import (
    class_activation_map,
    concept_scores,
    secam,
    secam_normalise,
    segment_map,
    upsample_map,
)

from ..explainer_fakes import FakeClassifier, grid_masks, random_image

# --- kernels: small inline cases -------------------------------------------------------------


def test_class_activation_map_is_weighted_channel_sum():
    f = np.array([[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.0], [1.0, 0.0]]])  # C=2, 2×2
    w = np.array([[1.0, 0.0], [0.5, -2.0], [0.0, 1.0]])  # K=3
    out = class_activation_map(f, w, [1, 2])
    expected = np.array([[[2.5, 1.0], [-0.5, 2.0]], [[-1.0, 0.0], [1.0, 0.0]]])
    np.testing.assert_allclose(out, expected)
    assert class_activation_map(f, w, 0).shape == (1, 2, 2)


def test_class_activation_map_rejects_bad_shapes():
    with pytest.raises(ValueError, match="K×2"):
        class_activation_map(np.zeros((2, 3, 3)), np.zeros((4, 3)), 0)
    with pytest.raises(ValueError, match="class indices"):
        class_activation_map(np.zeros((2, 3, 3)), np.zeros((4, 2)), 4)


def test_concept_scores_mean_sum_empty_mask_and_negative_map():
    maps = np.array([[[-1.0, -3.0], [2.0, 0.0]]])
    masks = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [1, 1]]], bool)  # second: empty
    np.testing.assert_allclose(concept_scores(maps, masks), [[-2.0, 0.0, 1.0 / 3.0]])
    np.testing.assert_allclose(concept_scores(maps, masks, "sum"), [[-4.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="reduce"):
        concept_scores(maps, masks, "max")


def test_concept_scores_one_concept_and_no_concept():
    maps = np.arange(6.0).reshape(1, 2, 3)
    one = np.ones((1, 2, 3), bool)
    np.testing.assert_allclose(concept_scores(maps, one), [[2.5]])
    assert concept_scores(maps, np.zeros((0, 2, 3), bool)).shape == (1, 0)


def test_secam_normalise_edge_cases():
    np.testing.assert_allclose(secam_normalise(np.array([[[-1.0, 0.5], [2.0, 0.0]]])),
                               [[[0.0, 0.25], [1.0, 0.0]]])
    np.testing.assert_array_equal(secam_normalise(np.full((2, 2, 2), -3.0)), np.zeros((2, 2, 2)))
    # each class map is normalised on its own
    two = secam_normalise(np.stack([np.full((2, 2), 2.0), np.array([[4.0, 1.0], [0.0, -1.0]])]))
    np.testing.assert_allclose(two, [[[1, 1], [1, 1]], [[1, 0.25], [0, 0]]])


def test_secam_values_and_map_inline():
    cam = np.array([[[-1.0, 1.0], [2.0, 4.0]]])
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :, :2] = True
    masks[1, :, 2:] = True  # masks[2] stays empty
    values, smap = secam(cam, masks)
    # normalised [[0, .25], [.5, 1]], upsampled ×2 bilinear: column weights 7/8, 1/8 per half
    np.testing.assert_allclose(values, [[0.296875, 0.578125, 0.0]])
    expected_map = np.zeros((1, 4, 4))
    expected_map[0, :, :2], expected_map[0, :, 2:] = 0.296875, 0.578125
    np.testing.assert_allclose(smap, expected_map)


def test_secam_of_negative_map_is_zero_and_one_concept_is_its_mean():
    values, smap = secam(-np.ones((1, 3, 3)), np.ones((1, 6, 6), bool))
    np.testing.assert_array_equal(values, [[0.0]])
    assert not smap.any()
    values, _ = secam(np.array([[[1.0, 3.0], [0.0, 0.0]]]), np.ones((1, 2, 2), bool))
    np.testing.assert_allclose(values, [[(1 / 3 + 1) / 4]])


def test_segment_map_overlap_takes_the_largest_and_fills_uncovered():
    masks = np.array([[[1, 1, 0]], [[0, 1, 1]]], bool)
    out = segment_map(np.array([[0.2, 0.7]]), masks, fill=-1.0)
    np.testing.assert_allclose(out, [[[0.2, 0.7, 0.7]]])
    out = segment_map(np.array([[0.2]]), masks[:1], fill=-1.0)
    np.testing.assert_allclose(out, [[[0.2, 0.2, -1.0]]])


def test_upsample_map_keeps_constants_and_range():
    flat = upsample_map(np.full((1, 3, 3), 2.5), (12, 9))
    np.testing.assert_allclose(flat, np.full((1, 12, 9), 2.5))
    rng = np.random.default_rng(0)
    m = rng.normal(size=(2, 4, 5))
    up = upsample_map(m, (16, 20))
    assert up.shape == (2, 16, 20)
    assert up.max() <= m.max() + 1e-12 and up.min() >= m.min() - 1e-12
    assert upsample_map(m[0], (8, 10)).shape == (8, 10)


# --- ground truth: torch CNN with global average pooling + linear ----------------------------


torch = pytest.importorskip("torch")


def _small_cnn():
    from eac.bench.train_demo import SceneCNN

    torch.manual_seed(0)
    model = SceneCNN(num_classes=4, channels=(4, 8, 8)).eval()
    # BatchNorm with non-trivial running statistics, so the map is not a plain conv
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _feature_map_and_grads(model, x, target):
    """Feature map F (hook on the pooling's input) and d logit_target / dF (autograd)."""
    captured = {}

    def hook(module, args):
        args[0].retain_grad()
        captured["f"] = args[0]

    handle = model.pool.register_forward_pre_hook(hook)
    try:
        logits = model(x)
        logits[0, target].backward()
    finally:
        handle.remove()
    f = captured["f"]
    fmap = f.detach()[0].numpy().astype(np.float64)
    return fmap, f.grad[0].numpy().astype(np.float64), logits.detach()[0]


@pytest.mark.parametrize("target", [0, 3])
def test_cam_equals_direct_torch_computation(target):
    model = _small_cnn()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fmap, _, logits = _feature_map_and_grads(model, x, target)
    weight = model.fc.weight.detach().numpy()
    bias = model.fc.bias.detach().numpy()
    with torch.no_grad():
        feats = model.features(x)[0]
        direct = torch.einsum("c,chw->hw", model.fc.weight[target], feats).numpy()
    cam = class_activation_map(fmap, weight, [target])[0]
    np.testing.assert_allclose(cam, direct, rtol=1e-5, atol=1e-5)
    # GAP identity: the map's mean is the logit minus the bias
    assert cam.mean() + bias[target] == pytest.approx(float(logits[target]), abs=1e-5)
    # upsampling agrees with torch's bilinear interpolation (align_corners=False)
    up_t = torch.nn.functional.interpolate(torch.from_numpy(direct)[None, None], size=(32, 32),
                                           mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(upsample_map(cam[None], (32, 32))[0], up_t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", [1, 2])
def test_grad_cam_equals_cam_up_to_a_positive_factor(target):
    model = _small_cnn()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    fmap, grads, _ = _feature_map_and_grads(model, x, target)
    h, w = fmap.shape[1:]
    alpha = grads.mean(axis=(1, 2))  # Grad-CAM channel weights
    grad_cam_linear = np.einsum("c,chw->hw", alpha, fmap)
    grad_cam = np.maximum(grad_cam_linear, 0.0)  # Grad-CAM proper (with its ReLU)
    cam = class_activation_map(fmap, model.fc.weight.detach().numpy(), [target])[0]
    factor = 1.0 / (h * w)
    np.testing.assert_allclose(grad_cam_linear, factor * cam, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad_cam, factor * np.maximum(cam, 0.0), rtol=1e-5, atol=1e-7)
    # the factor is positive and the least-squares factor is 1/(h·w): same ranking, same SeCAM
    fitted = float(grad_cam_linear.ravel() @ cam.ravel() / (cam.ravel() @ cam.ravel()))
    assert fitted == pytest.approx(factor, rel=1e-5)
    masks = grid_masks((32, 32), 2, 3)
    v_cam, _ = secam(cam[None], masks)
    v_grad, _ = secam(grad_cam[None], masks)
    np.testing.assert_allclose(v_cam, v_grad, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(concept_scores(upsample_map(grad_cam_linear[None], (32, 32)), masks),
                               factor * concept_scores(upsample_map(cam[None], (32, 32)), masks),
                               rtol=1e-5, atol=1e-8)


# --- the methods, on a fake classifier with a feature map -----------------------------------


@dataclass
class _Output:
    logits: np.ndarray
    features: np.ndarray | None
    provider: str = "FakeProvider"
    feature_map: np.ndarray | None = None


class FakeCamClassifier(FakeClassifier):
    """Pooled G×G cells → 1×1 "conv" + ReLU (D×G×G feature map) → global average pool → head."""

    def __init__(self, with_feature_map=True, **kw):
        super().__init__(nonlinear=False, **kw)
        rng = np.random.default_rng(7)
        hidden = self.fc.shape[1]
        self.w1 = rng.normal(0, 1.0, size=(hidden, 3)).astype(np.float32)
        self.b1 = rng.normal(0, 0.5, size=hidden).astype(np.float32)
        self.has_feature_map = with_feature_map
        self.feature_map_calls = 0

    def run(self, batch, features=True, feature_map=False):
        batch = np.asarray(batch, np.float32)
        self.calls += 1
        self.images += len(batch)
        b, c, h, w = batch.shape
        g = self.grid
        cells = batch.reshape(b, c, g, h // g, g, w // g).mean(axis=(3, 5))  # B×3×G×G
        pre = np.einsum("dc,bcuv->bduv", self.w1, cells) + self.b1[None, :, None, None]
        fmap = np.maximum(pre, 0)
        pooled = fmap.mean(axis=(2, 3))
        logits = pooled @ self.fc.T + self.bias
        if feature_map:
            self.feature_map_calls += 1
        give_map = feature_map and self.has_feature_map
        return _Output(logits.astype(np.float32), pooled.astype(np.float32) if features else None,
                       feature_map=fmap.astype(np.float32) if give_map else None)


def _method_input(classifier, targets=None, seed=0):
    crop = random_image((32, 32), seed=seed)
    masks = grid_masks((32, 32), 2, 3)
    masks[0, :2, :] = False  # uneven areas
    ev = MaskedEvaluator(classifier, crop, masks)
    full = ev.evaluate_full().logits[0]
    targets = np.array([int(np.argmax(full))] if targets is None else targets)
    return MethodInput(ev, classifier, targets, full, np.random.default_rng(0)), masks


def test_cam_method_values_heatmap_and_no_masked_evaluations():
    clf = FakeCamClassifier()
    inp, masks = _method_input(clf, targets=[0, 2])
    before = inp.evaluator.num_evaluations
    res = ClassActivationMap().run(inp)
    assert inp.evaluator.num_evaluations == before  # no masked evaluations
    assert clf.feature_map_calls == 1  # one forward pass of the crop, with the feature map
    fmap = clf.run(inp.evaluator.image_norm[None], feature_map=True).feature_map[0]
    heat = upsample_map(class_activation_map(fmap, clf.fc, [0, 2]), (32, 32))
    np.testing.assert_allclose(res.values, concept_scores(heat, masks), rtol=1e-5, atol=1e-6)
    sums = concept_scores(heat, masks, "sum")
    np.testing.assert_allclose(res.info["sums"], sums, rtol=1e-5, atol=1e-5)
    assert res.heatmaps.dtype == np.float32 and res.heatmaps.shape == (2, 32, 32)
    np.testing.assert_allclose(res.heatmaps, heat, rtol=1e-5, atol=1e-5)
    assert res.info["gap_consistency"] < 1e-4  # mean(W_y·F) + b_y = logit_y
    assert res.stderr is None and ClassActivationMap.value_type == "other"


def test_secam_method_values_in_unit_interval():
    clf = FakeCamClassifier()
    inp, masks = _method_input(clf)
    res = SegmentClassActivationMap().run(inp)
    fmap = clf.run(inp.evaluator.image_norm[None], feature_map=True).feature_map[0]
    values, smap = secam(class_activation_map(fmap, clf.fc, inp.targets), masks)
    np.testing.assert_allclose(res.values, values, rtol=1e-6, atol=1e-7)
    assert res.values.shape == (1, masks.shape[0])
    assert 0.0 <= res.values.min() and res.values.max() <= 1.0
    np.testing.assert_allclose(res.heatmaps, smap, atol=1e-6)


@pytest.mark.parametrize("method", [ClassActivationMap, SegmentClassActivationMap])
def test_methods_refuse_classifiers_without_feature_map_or_head(method):
    no_map = FakeCamClassifier(with_feature_map=False)
    with pytest.raises(ExplainError, match="feature map") as err:
        method().check_classifier(no_map)
    assert "\n" not in str(err.value)
    inp, _ = _method_input(no_map)
    with pytest.raises(ExplainError, match="feature_map output"):
        method().run(inp)
    black_box = FakeClassifier(black_box=True)
    black_box.has_feature_map = True
    with pytest.raises(ExplainError, match=r"head\.npz"):
        method().check_classifier(black_box)
    with pytest.raises(ExplainError, match="--evaluations"):
        method.budget(100)


@pytest.mark.parametrize("name", ["cam", "secam"])
def test_cam_methods_through_explain(name):
    from eac.engine.explainer import explain

    clf = FakeCamClassifier()
    crop = random_image((32, 32), seed=3)
    masks = grid_masks((32, 32), 2, 2)
    expl = explain(crop, clf, masks, method=name)
    assert expl.method == name and expl.value_type == "other"
    assert expl.num_evaluations == 1  # the whole crop only
    assert expl.values.shape == (4,)
    assert expl.info["heatmaps"].shape == (1, 32, 32)
