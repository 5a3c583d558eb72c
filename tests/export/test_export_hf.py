"""Classifiers from where users keep them: Hugging Face transformers (--hf) and timm (--timm).

Random-config transformers models (a small ResNet with a feature map, a small ViT without
one) are exported end to end through the CLI: the ONNX graph run by eac's runtime agrees
with PyTorch on images preprocessed as the model's own processor says, and the manifest
carries that preprocessing and the model's class names. timm needs torchvision, which
cannot be installed here: a stand-in module with timm's ``create_model`` and
``data.resolve_data_config`` checks the timm path.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eac.engine.classifier import Classifier
from eac.engine.cli import main
from eac.export._torch_utils import LEGACY_EXPORTER_WARNINGS, onnx_export
from eac.export.classifier import export_classifier
from eac.export.classifier_sources import (
    HF_KERNELS_PACKAGE,
    _check_kernels_not_shadowed,
    hf_preprocess,
    timm_preprocess,
)
from eac.export.errors import ExportError

from tests import tiny_models

SIDE = 32
#: ONNX Runtime fp32 against PyTorch fp32 on these small random models (logits of order 1).
PARITY_ATOL = 1e-4
#: A ConvNext-style processor (shortest edge, crop_pct) with its own mean/std: not ImageNet's.
RESNET_PROCESSOR = {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": SIDE},
                    "crop_pct": 0.875, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
                    "do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}
#: A ViT-style processor: resize to H×W (no crop), rescale by 1/127.5 around 1.0.
VIT_PROCESSOR = {"image_processor_type": "ViTImageProcessor", "size": {"height": SIDE, "width": SIDE},
                 "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 127.5, "do_normalize": True,
                 "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1.0, 1.0]}
CLASSES = ["cat", "dog", "owl", "fox", "elk"]


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch, transformers):
    """No hub access and a private cache: nothing is fetched or left in ~/.cache. huggingface_hub reads
    HF_HUB_OFFLINE when imported (before this fixture runs), so its constant is set too."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _save(model, folder: Path, processor: dict | None) -> Path:
    model.save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def _parity(folder: Path, model, processor: dict) -> float:
    """max |eac's ONNX logits − PyTorch logits| on random 0-255 crops, each side normalised its own way:
    eac from the manifest, PyTorch as the processor says (v·rescale_factor − mean) / std."""
    classifier = Classifier.from_folder(folder)
    crops = np.random.default_rng(0).uniform(0, 255, (3, SIDE, SIDE, 3)).astype(np.float32)
    ours = classifier.run(classifier.normalize(crops), features=False).logits
    scaled = crops * processor["rescale_factor"]
    pixels = (scaled - np.array(processor["image_mean"], np.float32)) / np.array(processor["image_std"], np.float32)
    with torch.no_grad():
        theirs = model(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())).logits.numpy()
    return float(np.max(np.abs(ours - theirs)))


def test_hf_resnet_exports_with_its_processor_labels_and_feature_map(tmp_path, transformers, offline_hub, capsys):
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5,
                                       id2label=dict(enumerate(CLASSES)),
                                       label2id={name: i for i, name in enumerate(CLASSES)})
    torch.manual_seed(0)  # transformers draws the random weights from torch's global generator
    model = transformers.ResNetForImageClassification(config).eval()
    folder = _save(model, tmp_path / "resnet", RESNET_PROCESSOR)
    out = tmp_path / "out"
    assert main(["export", "classifier", "--hf", str(folder), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocess"]["crop"] == SIDE and manifest["preprocess"]["resize"] == int(SIDE / 0.875)
    np.testing.assert_allclose(manifest["preprocess"]["mean"], RESNET_PROCESSOR["image_mean"])
    np.testing.assert_allclose(manifest["preprocess"]["std"], RESNET_PROCESSOR["image_std"])
    assert manifest["labels"] == CLASSES and manifest["source"]["hf_class"] == "ResNetForImageClassification"
    assert "preprocessor_config.json" in manifest["source"]["preprocess"]
    assert manifest["outputs"]["feature_map"] == "feature_map"  # global pooling → linear, as torchvision's
    assert manifest["source"]["feature_layer"] == "classifier.1"
    assert _parity(out, model, RESNET_PROCESSOR) < PARITY_ATOL


def test_hf_vit_exports_and_a_squashing_processor_is_noted(tmp_path, transformers, offline_hub):
    config = transformers.ViTConfig(image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=4)
    torch.manual_seed(1)
    model = transformers.ViTForImageClassification(config).eval()
    folder = _save(model, tmp_path / "vit", VIT_PROCESSOR)
    manifest = export_classifier(tmp_path / "out", hf=str(folder))
    assert manifest["outputs"]["feature_map"] is None and manifest["labels"] is None  # LABEL_i placeholders
    assert manifest["preprocess"]["crop"] == manifest["preprocess"]["resize"] == SIDE
    assert "without keeping the aspect ratio" in manifest["source"]["preprocess_notes"][0]
    # rescale 1/127.5, mean 1, std 1 ≡ eac's 1/255 scale with mean 0.5 and std 0.5
    np.testing.assert_allclose(manifest["preprocess"]["mean"], [0.5] * 3)
    np.testing.assert_allclose(manifest["preprocess"]["std"], [0.5] * 3)
    assert _parity(tmp_path / "out", model, VIT_PROCESSOR) < PARITY_ATOL


def test_hf_without_a_processor_takes_the_side_from_the_config(tmp_path, transformers, offline_hub):
    config = transformers.ViTConfig(image_size=SIDE, patch_size=16, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=1, intermediate_size=16, num_labels=3)
    torch.manual_seed(2)
    folder = _save(transformers.ViTForImageClassification(config), tmp_path / "bare", None)
    manifest = export_classifier(tmp_path / "out", hf=str(folder))
    assert manifest["preprocess"]["crop"] == SIDE and manifest["preprocess"]["resize"] == round(SIDE * 256 / 224)
    assert "config.image_size" in manifest["source"]["preprocess"]


def test_hf_hub_id_offline_says_what_to_fetch(tmp_path, transformers, offline_hub, capsys):
    assert main(["export", "classifier", "--hf", "someorg/some-classifier", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "hf download someorg/some-classifier --local-dir DIR" in err[0] and "--hf DIR" in err[0]
    assert not (tmp_path / "o").exists()


def test_hf_hub_id_without_a_network_reads_the_cache_at_once(tmp_path, transformers, monkeypatch, capsys):
    """No HF_HUB_OFFLINE, and the hub's name does not resolve (this machine): the hub client retried every file five
    times (25 s of "Retrying in 8s" lines) before eac's line. Now the name is looked up once and the cache read."""
    import socket

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    lookups = []

    def no_network(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert main(["export", "classifier", "--hf", "someorg/some-classifier", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf download someorg/some-classifier" in err[0]
    assert lookups == ["huggingface.co"]  # one look-up, no retries


def _kernels_distribution_installed() -> bool:
    try:
        importlib.metadata.version(HF_KERNELS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_hf_from_a_checkout_folder_says_kernels_is_hidden(tmp_path, transformers):
    """python -c in the checkout's root: its kernels/ folder hides the distribution transformers imports."""
    if not _kernels_distribution_installed():
        pytest.skip("this transformers does not bring Hugging Face's kernels package: nothing to hide")
    root = Path(__file__).resolve().parents[2]
    model = _save(transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=2)), tmp_path / "hf", None)
    script = ("import sys; from eac.engine.cli import main; "
              f"sys.exit(main(['export', 'classifier', '--hf', {str(model)!r}, '--out', {str(tmp_path / 'o')!r}]))")
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert "kernels/ folder hides" in err[0] and "run the `eac` command" in err[0]
    assert not (tmp_path / "o").exists()
    _check_kernels_not_shadowed()  # here the name is bound to the installed distribution (tests/conftest.py)


def test_hf_processor_settings_map_to_eacs_pipeline():
    notes: list[str] = []
    # BiT-style: shortest edge, then a centre crop
    bit = hf_preprocess({"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224,
                         "width": 224}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}, notes)
    assert (bit["resize"], bit["crop"]) == (256, 224) and notes == []
    # ConvNext at 384 and above resizes to a square without cropping
    assert hf_preprocess({"size": {"shortest_edge": 384}, "crop_pct": 0.875}, notes)["resize"] == 384
    # no normalisation: mean 0, std 1 on the 1/255 scale
    plain = hf_preprocess({"size": {"shortest_edge": 8}, "do_normalize": False}, notes)
    assert plain["mean"] == (0.0, 0.0, 0.0) and plain["std"] == (1.0, 1.0, 1.0)
    # the same numbers whichever scale the processor works on: (v·r − m)/s == (v/255 − mean)/std
    v = np.linspace(0, 255, 7)
    r, m, s = 1 / 127.5, 1.0, 1.0
    mapped = hf_preprocess({"size": 8, "rescale_factor": r, "image_mean": [m] * 3, "image_std": [s] * 3}, notes)
    np.testing.assert_allclose((v / 255 - mapped["mean"][0]) / mapped["std"][0], (v * r - m) / s)
    assert hf_preprocess({"size": {"height": 224, "width": 160}}, notes) is None  # not square: not guessed


# ---------------------------------------------------------------------- timm (stand-in)
@pytest.fixture()
def fake_timm(monkeypatch):
    """A timm with ``create_model`` serving the tiny CNN and ``data.resolve_data_config`` its data config."""
    calls = []
    timm = types.ModuleType("timm")
    timm.__version__ = "0.0+fake"
    data = types.ModuleType("timm.data")

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        if name != "tiny":
            raise RuntimeError(f"Unknown model ({name})")
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return tiny_models.small_cnn()

    def resolve_data_config(args=None, pretrained_cfg=None, model=None, **kwargs):
        assert model is not None
        return {"input_size": (3, SIDE, SIDE), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                "std": (0.25, 0.25, 0.25), "crop_pct": 0.9, "crop_mode": "center"}

    timm.create_model = create_model
    data.resolve_data_config = resolve_data_config
    timm.data = data
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", data)
    return calls


def test_timm_path_reads_the_data_config(tmp_path, fake_timm):
    manifest = export_classifier(tmp_path / "t", timm="tiny")
    assert manifest["preprocess"]["crop"] == SIDE and manifest["preprocess"]["resize"] == int(SIDE / 0.9)
    assert manifest["preprocess"]["mean"] == [0.5] * 3 and manifest["preprocess"]["std"] == [0.25] * 3
    assert manifest["source"]["timm"] == "tiny" and "random" in manifest["source"]["weights_note"]
    assert manifest["num_classes"] == tiny_models.NUM_CLASSES and manifest["validation"]["passed"]
    with pytest.raises(ExportError, match=r"--timm tiny: timm cannot create it .*--weights PATH"):
        export_classifier(tmp_path / "p", timm="tiny", weights="default")
    with pytest.raises(ExportError, match=r"Unknown model \(resnet9000\)"):
        export_classifier(tmp_path / "u", timm="resnet9000")
    assert not (tmp_path / "p").exists() and not (tmp_path / "u").exists()


def test_timm_crop_modes_other_than_center_are_noted():
    notes: list[str] = []
    got = timm_preprocess({"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0,
                           "crop_mode": "squash"}, notes)
    assert (got["resize"], got["crop"]) == (224, 224) and "squash" in notes[0]
    assert timm_preprocess({"input_size": (3, 224, 192), "mean": (0,) * 3, "std": (1,) * 3}, notes) is None


def test_timm_or_torchvision_missing_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert main(["export", "classifier", "--timm", "resnet50", "--out", str(tmp_path / "t")]) == 2
    assert main(["export", "classifier", "--torchvision", "resnet50", "--out", str(tmp_path / "v")]) == 2
    timm_line, tv_line = capsys.readouterr().err.strip().splitlines()
    for line in (timm_line, tv_line):
        assert "pip install torch==2.14.1 torchvision==0.29.1" in line and "built for your torch" in line
    assert "pip install timm" in timm_line and "--hf" in tv_line
    assert not (tmp_path / "t").exists() and not (tmp_path / "v").exists()


# ---------------------------------------------------------------------- the one torch.onnx.export call
def test_onnx_export_silences_only_the_legacy_exporters_deprecation(tmp_path):
    class Warns(torch.nn.Module):
        def forward(self, x):
            warnings.warn("a warning of the model itself", UserWarning, stacklevel=1)
            return x * 2

    def export(call) -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            call()
        return got

    raw = export(lambda: torch.onnx.export(Warns(), (torch.zeros(1, 3),), str(tmp_path / "raw.onnx"), dynamo=False))
    assert [w for w in raw if issubclass(w.category, DeprecationWarning)]  # torch does warn, so this can fail
    got = export(lambda: onnx_export(Warns(), (torch.zeros(1, 3),), tmp_path / "ours.onnx", opset_version=17))
    assert not [w for w in got if issubclass(w.category, DeprecationWarning)]
    assert any("a warning of the model itself" in str(w.message) for w in got)
    assert len(LEGACY_EXPORTER_WARNINGS) == len({str(w.message)[:30] for w in raw
                                                if issubclass(w.category, DeprecationWarning)})


def test_torch_onnx_export_is_called_in_one_place():
    root = Path(__file__).resolve().parents[2]
    callers = sorted(str(p.relative_to(root)) for folder in ("engine", "export", "bench", "kernels")
                     for p in (root / folder).rglob("*.py") if "torch.onnx.export(" in p.read_text())
    assert callers == ["export/_torch_utils.py"]
