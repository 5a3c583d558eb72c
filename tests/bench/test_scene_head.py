"""The pieces of the bench's scene-fitted classifiers: the fitted layer, and the two trunk preparations."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

#: A linear rule on features far from zero and of very different scales; the fit must recover it.
MIN_ACCURACY = 0.95


def test_fitted_layer_applies_to_raw_features():
    from eac.bench.scene_head import fit_layer

    rng = np.random.default_rng(0)
    scales = np.array([1.0, 10.0, 0.1, 5.0, 2.0, 0.5])
    raw = rng.normal(size=(800, 6)) * scales
    labels = (raw @ (np.array([1.0, 0.0, 0.0, 0.4, 0.0, 0.0]) / scales) < 0).astype(np.int64)
    feats = (raw + 100.0).astype(np.float32)  # far from zero, as pooled activations are
    w, b = fit_layer(feats[:600], labels[:600])
    assert w.shape == (2, 6) and b.shape == (2,)
    accuracy = np.mean(np.argmax(feats[600:] @ w.T + b, 1) == labels[600:])
    assert accuracy >= MIN_ACCURACY
    # The same weights without the folded centring (bias left as fitted on centred features) fail:
    centred_bias = b + w @ feats[:600].mean(0)
    assert np.mean(np.argmax(feats[600:] @ w.T + centred_bias, 1) == labels[600:]) < MIN_ACCURACY


def test_zero_init_residual_makes_every_bottleneck_an_identity():
    from eac.bench.models import Bottleneck, tiny_resnet
    from eac.bench.scene_head import zero_init_residual_

    torch.manual_seed(0)
    block = Bottleneck(32, 8).eval()  # no downsample: in and out channels equal
    x = torch.rand(2, 32, 8, 8)  # non-negative, as after a ReLU
    with torch.no_grad():
        assert not torch.equal(block(x), x)
        zero_init_residual_(block)
        assert torch.equal(block(x), x)
    model = zero_init_residual_(tiny_resnet(seed=3))
    assert all(not m.bn3.weight.detach().any() for m in model.modules() if isinstance(m, Bottleneck))


def test_batch_norm_recalibration_takes_the_datas_statistics():
    from eac.bench.scene_head import recalibrate_batch_norm_

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    x = torch.randn(40, 3, 12, 12) * 3 + 1
    recalibrate_batch_norm_(model, x, batch=8)  # five equal batches, their statistics averaged
    with torch.no_grad():
        conv = model[0](x)
    bn = model[1]
    assert not model.training
    np.testing.assert_allclose(bn.running_mean.numpy(), conv.mean((0, 2, 3)).numpy(), atol=1e-4)
    with torch.no_grad():
        out = model(x)
    assert float(out.mean((0, 2, 3)).abs().max()) < 1e-3  # normalised on the data it was measured on
    np.testing.assert_allclose(out.var((0, 2, 3)).numpy(), 1.0, atol=0.05)


def test_feature_scaling_scales_a_zero_initialised_resnets_features_exactly():
    from eac.bench.models import TINY_WIDTH, ResNet, init_resnet_
    from eac.bench.scene_head import scale_features_, zero_init_residual_

    def two_block_resnet():  # a last stage of two blocks: an identity block after the scaled one
        return init_resnet_(ResNet((1, 1, 1, 2), 2, width=TINY_WIDTH), 3).eval()

    torch.manual_seed(0)
    x = torch.randn(6, 3, 64, 64)
    model = zero_init_residual_(two_block_resnet())
    with torch.no_grad():
        before = model.features(x)
        scale = scale_features_(model, x, target=0.5)
        after = model.features(x)
    assert scale > 1.0  # the zero-initialised trunk's features are smaller than a trained one's
    np.testing.assert_allclose(float(after.mean()), 0.5, rtol=1e-5)
    np.testing.assert_allclose(after.numpy(), scale * before.numpy(), rtol=1e-4, atol=1e-6)


def test_margin_limit_keeps_every_prediction_and_caps_the_margin():
    from eac.bench.scene_head import MARGIN_PERCENTILE, limit_margin

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(200, 5)).astype(np.float32)
    weight = rng.normal(size=(2, 5)).astype(np.float32) * 100.0  # margins in the hundreds
    bias = np.array([3.0, -3.0], np.float32)
    w, b, temperature = limit_margin(weight, bias, feats, limit=10.0)
    before, after = feats @ weight.T + bias, feats @ w.T + b
    assert temperature > 1.0
    np.testing.assert_array_equal(np.argmax(after, 1), np.argmax(before, 1))
    margin = np.abs(after[:, 0] - after[:, 1])
    np.testing.assert_allclose(np.percentile(margin, MARGIN_PERCENTILE), 10.0, rtol=1e-4)
    # A layer already within the limit is left alone.
    w2, b2, t2 = limit_margin(w, b, feats, limit=20.0)
    assert t2 == 1.0 and np.array_equal(w2, w) and np.array_equal(b2, b)
