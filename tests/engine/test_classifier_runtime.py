"""engine.classifier.Classifier: preprocessing, batching, log-probabilities, folder errors, threads."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eac.engine.classifier import Classifier, ClassifierOutput
from eac.engine.errors import InputShapeError, ManifestVersionError, ModelFolderError
from eac.engine.images import apply_frame
from eac.export.classifier import export_classifier
from eac.export.import_onnx import import_onnx

from tests import tiny_models

# the legacy TorchScript exporter (used to write "wild" ONNX files) warns that it is deprecated
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 32
RESIZE = 36
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
#: ORT vs PyTorch fp32 on the tiny CNN.
PARITY_ATOL = 1e-4
#: Same session, same input: per-item vs batched runs agree to float rounding.
BATCH_ATOL = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rt") / "cnn"
    labels = out.parent / "labels.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(tiny_models.NUM_CLASSES)))
    export_classifier(out, module="tests.tiny_models:small_cnn", input_size=SIZE, resize=RESIZE, mean=MEAN, std=STD,
                      labels=labels)
    return out


class _HardBatchSoftmax(torch.nn.Module):
    """The tiny CNN with softmax and a Reshape hard-coded to batch 1 (a typical wild ONNX file)."""

    def __init__(self):
        super().__init__()
        self.m = tiny_models.small_cnn()

    def forward(self, x):
        z = self.m.pool(self.m.body(x)).reshape(1, -1)
        return torch.softmax(self.m.fc(z), dim=1)


@pytest.fixture(scope="module")
def prob_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prob")
    src = root / "wild.onnx"
    torch.onnx.export(_HardBatchSoftmax().eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(src), input_names=["data"],
                      output_names=["prob"], opset_version=11, dynamo=False)
    import_onnx(src, root / "folder", resize=RESIZE)
    return root / "folder"


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(40 + 3 * i, 50 + 5 * i, 3), dtype=np.uint8) for i in range(n)]


def test_attributes(folder):
    clf = Classifier.from_folder(folder)
    assert clf.input_hw == (SIZE, SIZE)
    np.testing.assert_allclose(clf.mean, MEAN)
    np.testing.assert_allclose(clf.std, STD)
    assert clf.mean.dtype == clf.std.dtype == np.float32
    assert clf.channel_order == "RGB" and clf.output_kind == "logits"
    assert clf.num_classes == tiny_models.NUM_CLASSES
    assert clf.labels == [f"class{i}" for i in range(tiny_models.NUM_CLASSES)]
    assert clf.has_features and clf.feature_dim == tiny_models.FEATURE_DIM
    w, b = clf.head
    assert w.shape == (tiny_models.NUM_CLASSES, tiny_models.FEATURE_DIM) and b.shape == (tiny_models.NUM_CLASSES,)
    assert clf.provider == "CPUExecutionProvider"
    assert clf.max_batch is None


def test_crop_and_frame(folder):
    clf = Classifier.from_folder(folder)
    image = _images(1)[0]  # 40×50
    crop, frame = clf.crop(image)
    assert crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.uint8
    # shorter side 40 → 36, longer int(36 * 50 / 40) = 45; offsets round((36-32)/2), round((45-32)/2)
    assert frame.resized_hw == (36, 45) and frame.box == (2, 6, SIZE, SIZE)
    assert frame == clf.frame_for((40, 50))
    np.testing.assert_array_equal(crop, apply_frame(image, frame))


def test_normalize_and_baseline(folder):
    clf = Classifier.from_folder(folder)
    crops = np.random.default_rng(1).integers(0, 256, size=(2, SIZE, SIZE, 3), dtype=np.uint8)
    x = clf.normalize(crops)
    assert x.shape == (2, 3, SIZE, SIZE) and x.dtype == np.float32
    expected = ((crops / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x, expected, atol=1e-5)
    black = clf.normalize(np.zeros((SIZE, SIZE, 3), np.uint8))
    np.testing.assert_allclose(black[0, :, 0, 0], clf.baseline_value(), atol=1e-6)
    np.testing.assert_allclose(clf.baseline_value(), -np.array(MEAN) / np.array(STD), atol=1e-6)


def test_bgr_channel_order(tmp_path):
    export_classifier(tmp_path / "bgr", module="tests.tiny_models:small_cnn", input_size=SIZE, resize=RESIZE,
                      mean=MEAN, std=STD, channel_order="BGR")
    clf = Classifier.from_folder(tmp_path / "bgr")
    crop = np.zeros((SIZE, SIZE, 3), np.uint8)
    crop[..., 2] = 255  # pure blue in RGB
    x = clf.normalize(crop)
    # channel 0 of a BGR network is blue: (1 - mean_B) / std_B
    assert x[0, 0, 0, 0] == pytest.approx((1 - MEAN[2]) / STD[2], abs=1e-6)
    assert x[0, 2, 0, 0] == pytest.approx((0 - MEAN[0]) / STD[0], abs=1e-6)
    np.testing.assert_allclose(clf.baseline_value(), (-np.array(MEAN) / np.array(STD))[::-1], atol=1e-6)


def test_run_matches_pytorch_and_head(folder):
    clf = Classifier.from_folder(folder)
    crops = np.stack([clf.crop(im)[0] for im in _images(4)])
    x = clf.normalize(crops)
    out = clf.run(x)
    assert isinstance(out, ClassifierOutput) and out.provider == "CPUExecutionProvider"
    with torch.no_grad():
        ref = tiny_models.small_cnn()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out.logits, ref, atol=PARITY_ATOL)
    w, b = clf.head
    np.testing.assert_allclose(out.features @ w.T + b, out.logits, atol=1e-5)
    np.testing.assert_array_equal(clf(x), out.logits)


def test_batch_equals_single(folder):
    clf = Classifier.from_folder(folder)
    x = np.random.default_rng(2).standard_normal((7, 3, SIZE, SIZE)).astype(np.float32)
    batched = clf.run(x)
    singles = [clf.run(x[i : i + 1]) for i in range(len(x))]
    np.testing.assert_allclose(batched.logits, np.concatenate([s.logits for s in singles]), atol=BATCH_ATOL)
    np.testing.assert_allclose(batched.features, np.concatenate([s.features for s in singles]), atol=BATCH_ATOL)
    empty = clf.run(x[:0])
    assert empty.logits.shape == (0, tiny_models.NUM_CLASSES) and empty.features.shape == (0, tiny_models.FEATURE_DIM)


def test_fixed_batch_probability_model(prob_folder, folder):
    clf = Classifier.from_folder(prob_folder)
    assert clf.max_batch == 1 and clf.output_kind == "probabilities"
    # import-onnx found the final linear layer of the adopted graph: features and head are exposed
    assert clf.has_features and clf.head is not None and clf.feature_dim == tiny_models.FEATURE_DIM
    x = np.random.default_rng(3).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    logp = clf(x)
    assert logp.shape == (5, tiny_models.NUM_CLASSES) and logp.dtype == np.float32
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, atol=1e-5)
    # log-probabilities are logits up to a per-row constant: same softmax as the logits model
    logits = Classifier.from_folder(folder).run(x).logits  # same weights, other preprocessing stats irrelevant here
    ref = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(logp, ref, atol=1e-5)
    singles = np.concatenate([clf(x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(logp, singles, atol=BATCH_ATOL)


def test_wrong_input_shapes(folder):
    clf = Classifier.from_folder(folder)
    for bad in (np.zeros((2, 3, SIZE, SIZE - 1), np.float32), np.zeros((3, SIZE, SIZE), np.float32),
                np.zeros((1, SIZE, SIZE, 3), np.float32)):
        with pytest.raises(InputShapeError, match=f"B×3×{SIZE}×{SIZE}") as info:
            clf.run(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(InputShapeError, match="normalize"):
        clf.run(np.zeros((1, 3, SIZE, SIZE), np.uint8))
    with pytest.raises(InputShapeError, match=f"B×{SIZE}×{SIZE}×3"):
        clf.normalize(np.zeros((1, SIZE + 1, SIZE, 3), np.uint8))


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    for key, value in changes.items():
        target = m
        parts = key.split("__")
        for p in parts[:-1]:
            target = target[p]
        target[parts[-1]] = value
    path.write_text(json.dumps(m))


def test_newer_manifest_refused(folder, tmp_path):
    dst = _copy(folder, tmp_path)
    _edit_manifest(dst, format_version=99)
    with pytest.raises(ManifestVersionError, match="newer eac"):
        Classifier.from_folder(dst)


@pytest.mark.parametrize("name", ["classifier.onnx", "head.npz", "manifest.json"])
def test_missing_file(folder, tmp_path, name):
    dst = _copy(folder, tmp_path)
    (dst / name).unlink()
    with pytest.raises(ModelFolderError) as info:
        Classifier.from_folder(dst)
    assert "\n" not in str(info.value)


def test_onnx_not_matching_manifest(folder, prob_folder, tmp_path):
    # another model's ONNX file under the right name (sizes fixed up so only the contents differ)
    dst = _copy(folder, tmp_path)
    shutil.copy(prob_folder / "classifier.onnx", dst / "classifier.onnx")
    _edit_manifest(dst, files__model__bytes=(dst / "classifier.onnx").stat().st_size)
    with pytest.raises(ModelFolderError, match="checksum differs"):  # caught by the checksums first...
        Classifier.from_folder(dst)
    with pytest.raises(ModelFolderError, match=r"does not match its manifest.*re-run"):  # ...and by the graph check
        Classifier.from_folder(dst, verify=False)
    # right file, manifest claims another class count
    dst2 = tmp_path / "k"
    shutil.copytree(folder, dst2)
    _edit_manifest(dst2, num_classes=tiny_models.NUM_CLASSES + 1)
    with pytest.raises(ModelFolderError, match="re-run"):
        Classifier.from_folder(dst2)
    # right file, manifest names an output that does not exist
    dst3 = tmp_path / "o"
    shutil.copytree(folder, dst3)
    _edit_manifest(dst3, outputs__features="pooled")
    with pytest.raises(ModelFolderError, match="does not match"):
        Classifier.from_folder(dst3)


def test_malformed_manifest(folder, tmp_path):
    dst = _copy(folder, tmp_path)
    _edit_manifest(dst, output_kind="scores")
    with pytest.raises(ModelFolderError, match="output_kind"):
        Classifier.from_folder(dst)


THREADS = 4
REPEATS = 3


@pytest.mark.parametrize("which", ["folder", "prob_folder"])
def test_concurrent_calls_equal_sequential(request, which):
    clf = Classifier.from_folder(request.getfixturevalue(which))
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((1 + i % 4, 3, SIZE, SIZE)).astype(np.float32) for i in range(12)]
    sequential = [clf(b) for b in batches]
    jobs = batches * REPEATS
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        concurrent = list(pool.map(clf, jobs))  # worker exceptions re-raise here
    for got, ref in zip(concurrent, sequential * REPEATS):
        np.testing.assert_array_equal(got, ref)


def test_fp16_folder(tmp_path, folder):
    export_classifier(tmp_path / "h", module="tests.tiny_models:small_cnn", input_size=SIZE, resize=RESIZE,
                      mean=MEAN, std=STD, fp16=True)
    half = Classifier.from_folder(tmp_path / "h")
    x = np.random.default_rng(5).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    out, ref = half.run(x), Classifier.from_folder(folder).run(x)
    assert out.logits.dtype == np.float32 and out.features.dtype == np.float32
    np.testing.assert_allclose(out.logits, ref.logits, atol=5e-2)


def test_static_batch_graph_with_dynamic_manifest_refused(prob_folder, tmp_path):
    dst = tmp_path / "p"
    shutil.copytree(prob_folder, dst)
    _edit_manifest(dst, input__batch=None)
    with pytest.raises(ModelFolderError, match="does not match"):
        Classifier.from_folder(dst)


def test_verify_detects_changed_weights(folder, tmp_path):
    dst = _copy(folder, tmp_path)
    Classifier.from_folder(dst, verify=True)
    data = bytearray((dst / "head.npz").read_bytes())
    data[-30] ^= 0xFF  # same size, other content
    (dst / "head.npz").write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="checksum"):
        Classifier.from_folder(dst, verify=True)
