"""The bench's mobile classifier (MobileNetV3-Large, written here without torchvision) and the MAC counter."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

#: torchvision.models.mobilenet_v3_large(): parameters and state-dict entries.
TORCHVISION_MOBILENET_V3_LARGE_PARAMS = 5_483_032
TORCHVISION_MOBILENET_V3_LARGE_KEYS = 312
#: Published multiply-accumulates per 224×224 image (torchvision's tables: 0.22 and 4.09 "GFLOPS", which are
#: MACs), and the mobile classifier band of issue 18.
MOBILENET_GMAC, RESNET50_GMAC = 0.217, 4.089
GMAC_TOLERANCE = 0.005
MOBILE_BAND = (0.2, 0.4)


def test_mobilenet_v3_large_has_torchvisions_layout():
    from eac.bench.mobilenet import HEAD, mobilenet_v3_large

    model = mobilenet_v3_large(seed=1)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_MOBILENET_V3_LARGE_PARAMS
    assert len(state) == TORCHVISION_MOBILENET_V3_LARGE_KEYS
    for key in ("features.0.0.weight", "features.1.block.0.0.weight", "features.4.block.2.fc1.weight",
                "features.16.1.running_var", "classifier.0.weight"):
        assert key in state
    assert tuple(model.get_submodule(HEAD).weight.shape) == (1000, 1280)
    again = mobilenet_v3_large(seed=1)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), again.state_dict().values()))
    assert not torch.equal(state["features.0.0.weight"], mobilenet_v3_large(seed=2).state_dict()["features.0.0.weight"])


def test_mac_counter_gives_the_published_figures():
    from eac.bench.macs import count_macs
    from eac.bench.mobilenet import mobilenet_v3_large
    from eac.bench.models import resnet50

    mobile = count_macs(mobilenet_v3_large(seed=1)) / 1e9
    assert mobile == pytest.approx(MOBILENET_GMAC, abs=GMAC_TOLERANCE)
    assert MOBILE_BAND[0] <= mobile <= MOBILE_BAND[1]
    assert count_macs(resnet50()) / 1e9 == pytest.approx(RESNET50_GMAC, abs=GMAC_TOLERANCE)
    # A counter that ignored groups would count every depthwise convolution as a dense one:
    stem = 3 * 64 * 8 * 8  # a 1×1 convolution 3 → 64 channels on 8×8
    dense = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 1), torch.nn.Conv2d(64, 64, 3, padding=1))
    depthwise = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 1), torch.nn.Conv2d(64, 64, 3, padding=1, groups=64))
    assert count_macs(dense, (8, 8)) - stem == 64 * (count_macs(depthwise, (8, 8)) - stem) == 64 * 9 * 64 * 64


def test_mobilenet_exports_and_runs_like_pytorch(tmp_path):
    """The narrow QUICK variant through eac's classifier export: its final layer is found, outputs agree."""
    import numpy as np
    from eac.bench.models import TINY_MOBILE_WIDTH, head_layer, tiny_mobilenet_factory
    from eac.engine.classifier import Classifier
    from eac.export.classifier import export_classifier

    manifest = export_classifier(out=tmp_path / "m", module="eac.bench.models:tiny_mobilenet_factory",
                                 input_size=64, resize=None)
    assert manifest["source"]["feature_layer"] == head_layer("tiny_mobile") == "classifier.3"
    model = tiny_mobilenet_factory()
    engine = Classifier.from_folder(tmp_path / "m")
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.run(x).logits, expected, atol=1e-4)
    assert TINY_MOBILE_WIDTH < 1
