"""`eac export classifier`: tiny CNNs through the CLI, parity with PyTorch, error paths."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from eac.engine import Classifier
from eac.engine.cli import main
from eac.engine.errors import ModelFolderError
from eac.export import classifier as export_mod
from eac.export.classifier import export_classifier
from eac.export.errors import CheckpointError, ExportError, ValidationError

from tests import tiny_models

SIZE = 32
RESIZE = 36
#: Parity of ONNX Runtime fp32 with PyTorch fp32 on these tiny models.
PARITY_ATOL = 1e-4


def _export_cli(out: Path, *extra: str) -> int:
    return main(
        ["export", "classifier", "--out", str(out), "--input-size", str(SIZE), "--resize", str(RESIZE), *extra]
    )


def _no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.endswith(".partial")]


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "small"
    assert _export_cli(out, "--module", "tests.tiny_models:small_cnn") == 0
    return out


def _ort_run(folder: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(folder / "classifier.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"input": x}), strict=True))


def test_cli_writes_complete_folder(small_folder):
    assert sorted(p.name for p in small_folder.iterdir()) == ["classifier.onnx", "head.npz", "manifest.json"]
    m = json.loads((small_folder / "manifest.json").read_text())
    assert m["kind"] == "classifier"
    assert m["num_classes"] == tiny_models.NUM_CLASSES
    assert m["feature_dim"] == tiny_models.FEATURE_DIM
    assert m["input"] == {"name": "input", "height": SIZE, "width": SIZE, "batch": None, "layout": "NCHW",
                          "dtype": "float32"}
    assert m["outputs"] == {"logits": "logits", "features": "features", "feature_map": "feature_map"}
    assert m["output_kind"] == "logits"
    assert m["preprocess"]["resize"] == RESIZE and m["preprocess"]["crop"] == SIZE
    assert m["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert m["source"]["feature_layer"] == "fc" and m["source"]["feature_map_layer"] == "body"
    val = m["validation"]
    assert val["passed"] and val["batch"] != val["traced_batch"]
    assert set(val["max_abs_diff"]) == {"logits", "features", "feature_map"}
    assert val["feature_map_pool_max_abs_diff"] < 1e-5
    assert all(val["max_abs_diff"][k] <= val["tolerance"][k] for k in val["tolerance"])
    assert 0 <= val["head_max_abs_diff"] < 1e-5


def test_onnx_matches_pytorch_on_other_batch_sizes(small_folder):
    model = tiny_models.small_cnn()
    feats = {}
    model.fc.register_forward_hook(lambda mod, args, out: feats.__setitem__("x", args[0]))
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
        got = _ort_run(small_folder, x)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert got["logits"].shape == (batch, tiny_models.NUM_CLASSES)
        np.testing.assert_allclose(got["logits"], ref, atol=PARITY_ATOL)
        np.testing.assert_allclose(got["features"], feats["x"].numpy(), atol=PARITY_ATOL)


def test_head_reproduces_logits_from_features(small_folder):
    head = np.load(small_folder / "head.npz")
    model = tiny_models.small_cnn()
    np.testing.assert_array_equal(head["weight"], model.fc.weight.detach().numpy())
    np.testing.assert_array_equal(head["bias"], model.fc.bias.detach().numpy())
    assert head["weight"].dtype == np.float32
    x = np.random.default_rng(7).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    got = _ort_run(small_folder, x)
    np.testing.assert_allclose(got["features"] @ head["weight"].T + head["bias"], got["logits"], atol=1e-5)


@pytest.mark.parametrize(
    "factory, layer, dim",
    [
        ("sequential_head_cnn", "classifier.3", 24),
        ("decoy_linear_cnn", "head", 10),
        ("efficient_head_cnn", "classifier.1", tiny_models.FEATURE_DIM),
        ("tiny_vit", "heads.head", tiny_models.FEATURE_DIM),
    ],
)
def test_head_found_automatically(tmp_path, factory, layer, dim):
    m = export_classifier(tmp_path / "out", module=f"tests.tiny_models:{factory}", input_size=SIZE, resize=RESIZE)
    assert m["source"]["feature_layer"] == layer
    assert m["feature_dim"] == dim
    head = np.load(tmp_path / "out" / "head.npz")
    assert head["weight"].shape == (tiny_models.NUM_CLASSES, dim)
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    got = _ort_run(tmp_path / "out", x)
    with torch.no_grad():
        ref = getattr(tiny_models, factory)()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got["logits"], ref, atol=PARITY_ATOL)
    np.testing.assert_allclose(got["features"] @ head["weight"].T + head["bias"], got["logits"], atol=1e-5)


def test_feature_layer_override_and_errors(tmp_path):
    m = export_classifier(tmp_path / "ok", module="tests.tiny_models:small_cnn", feature_layer="fc",
                          input_size=SIZE, resize=RESIZE)
    assert m["source"]["feature_layer"] == "fc"
    with pytest.raises(ExportError, match=r"not a torch\.nn\.Linear"):
        export_classifier(tmp_path / "conv", module="tests.tiny_models:small_cnn", feature_layer="body.0",
                          input_size=SIZE, resize=RESIZE)
    with pytest.raises(ExportError, match="no such module"):
        export_classifier(tmp_path / "none", module="tests.tiny_models:small_cnn", feature_layer="nope",
                          input_size=SIZE, resize=RESIZE)
    # decoy: 'aux' has K outputs but its output is not the model's output
    with pytest.raises(ExportError, match="not the model's output"):
        export_classifier(tmp_path / "aux", module="tests.tiny_models:decoy_linear_cnn", feature_layer="aux",
                          input_size=SIZE, resize=RESIZE)
    assert _no_leftovers(tmp_path) and not (tmp_path / "conv").exists()


def test_model_with_softmax_after_head_is_refused(tmp_path, capsys):
    assert _export_cli(tmp_path / "sm", "--module", "tests.tiny_models:softmax_cnn") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--feature-layer" in err
    assert not (tmp_path / "sm").exists() and _no_leftovers(tmp_path)


def test_a_single_output_is_refused_at_export_and_at_load(tmp_path, capsys):
    """One logit: its softmax probability is always 1, so every explanation was all zeros, exit 0."""
    assert _export_cli(tmp_path / "one", "--module", "tests.tiny_models:single_logit_cnn") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 output" in err and "(0, z)" in err
    assert not (tmp_path / "one").exists() and _no_leftovers(tmp_path)
    # a folder written by other means (here: an eac folder edited to one class) is refused when loaded
    folder = tmp_path / "edited"
    export_classifier(folder, module="tests.tiny_models:small_cnn", input_size=SIZE, resize=RESIZE)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["num_classes"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="1 output"):
        Classifier.from_folder(folder, verify=False)


def test_validation_failure_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(ValidationError) as info:
        export_classifier(tmp_path / "bad", module="tests.tiny_models:tracing_mismatch_cnn",
                          input_size=SIZE, resize=RESIZE)
    err = info.value
    assert err.output == "logits" and err.kind == "values"
    assert err.max_abs_diff == pytest.approx(1.0, abs=1e-4)
    assert err.tolerance == export_mod.CLASSIFIER.tolerance["logits"]
    assert not (tmp_path / "bad").exists() and _no_leftovers(tmp_path)


def test_validation_uses_spec_tolerance(tmp_path, monkeypatch):
    strict = dataclasses.replace(export_mod.CLASSIFIER,
                                 tolerance={"logits": -1.0, "features": -1.0, "feature_map": -1.0})
    monkeypatch.setattr(export_mod, "CLASSIFIER", strict)
    with pytest.raises(ValidationError):
        export_classifier(tmp_path / "x", module="tests.tiny_models:small_cnn", input_size=SIZE, resize=RESIZE)


def test_skip_validation_and_exit_code_of_mismatch(tmp_path, capsys):
    assert _export_cli(tmp_path / "mm", "--module", "tests.tiny_models:tracing_mismatch_cnn") == 2
    assert "differs from PyTorch" in capsys.readouterr().err
    assert _export_cli(tmp_path / "skip", "--module", "tests.tiny_models:tracing_mismatch_cnn",
                       "--skip-validation") == 0
    assert json.loads((tmp_path / "skip" / "manifest.json").read_text())["validation"] == {"skipped": True}


def test_fp16_export_is_validated(tmp_path):
    m = export_classifier(tmp_path / "h", module="tests.tiny_models:small_cnn", input_size=SIZE, resize=RESIZE,
                          fp16=True)
    assert m["precision"] == "fp16"
    assert m["validation"]["tolerance"] == export_mod.CLASSIFIER.tolerance_fp16
    sess = ort.InferenceSession(str(tmp_path / "h" / "classifier.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)"
    assert {o.type for o in sess.get_outputs()} == {"tensor(float)"}


def test_fp16_keeps_layernorm_in_fp32(tmp_path):
    import onnx

    m = export_classifier(tmp_path / "vit16", module="tests.tiny_models:tiny_vit", input_size=SIZE, resize=RESIZE,
                          fp16=True)
    assert m["fp32_layers"] == ["GroupNorm", "LayerNorm"]
    graph = onnx.load(str(tmp_path / "vit16" / "classifier.onnx")).graph
    inits = {t.name: t.data_type for t in graph.initializer}
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 3  # ln1, ln2, ln
    for node in norms:
        assert inits[node.input[1]] == onnx.TensorProto.FLOAT  # scale stored in fp32
    assert any(t == onnx.TensorProto.FLOAT16 for t in inits.values())  # the rest is fp16


def test_labels(tmp_path):
    names = tmp_path / "labels.txt"
    names.write_text("cat\ndog\nbird\nfish\nfrog\n\n")
    m = export_classifier(tmp_path / "l", module="tests.tiny_models:small_cnn", labels=names,
                          input_size=SIZE, resize=RESIZE)
    assert m["labels"] == ["cat", "dog", "bird", "fish", "frog"]
    names.write_text("cat\ndog\n")
    with pytest.raises(ExportError, match="2 labels but the model has 5 classes"):
        export_classifier(tmp_path / "l2", module="tests.tiny_models:small_cnn", labels=names,
                          input_size=SIZE, resize=RESIZE)


def test_checkpoint_is_loaded(tmp_path):
    model = tiny_models.small_cnn()
    state = {k: v * 2 for k, v in model.state_dict().items()}
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ckpt.pt")
    m = export_classifier(tmp_path / "c", module="tests.tiny_models:small_cnn", checkpoint=tmp_path / "ckpt.pt",
                          input_size=SIZE, resize=RESIZE)
    assert m["source"]["checkpoint"]["tensors"] == len(state)
    np.testing.assert_array_equal(np.load(tmp_path / "c" / "head.npz")["weight"], state["fc.weight"].numpy())


def test_bad_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(tiny_models.small_cnn().state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = tmp_path / "other.pt"
    torch.save(tiny_models.sequential_head_cnn().state_dict(), other)
    whole = tmp_path / "whole.pt"
    torch.save(tiny_models.small_cnn(), whole)  # the model object, not its state dict
    cases = {
        tmp_path / "missing.pt": "not found",
        truncated: "cannot read",
        other: "does not fit this model",
        whole: r"pickled Python objects .*save model\.state_dict\(\) instead",  # torch's text, colour codes and all
    }
    for i, (path, message) in enumerate(cases.items()):
        with pytest.raises(CheckpointError, match=message) as info:
            export_classifier(tmp_path / f"o{i}", module="tests.tiny_models:small_cnn", checkpoint=path,
                              input_size=SIZE, resize=RESIZE)
        assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
        assert not (tmp_path / f"o{i}").exists()
    assert _no_leftovers(tmp_path)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tests.tiny_models", "PKG.MODULE:FACTORY"),
        ("tests.no_such_module:f", "cannot import"),
        ("tests.tiny_models:no_such_factory", "no attribute"),
        ("tests.tiny_models:not_a_module", "not a torch.nn.Module"),
    ],
)
def test_bad_module_specs(tmp_path, spec, message):
    with pytest.raises(ExportError, match=message):
        export_classifier(tmp_path / "o", module=spec, input_size=SIZE, resize=RESIZE)
    assert not (tmp_path / "o").exists() and _no_leftovers(tmp_path)


def test_output_folder_rules(tmp_path, small_folder, capsys):
    # non-empty existing folder refused, untouched
    before = sorted(p.name for p in small_folder.iterdir())
    assert _export_cli(small_folder, "--module", "tests.tiny_models:small_cnn") == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in small_folder.iterdir()) == before
    # empty existing folder accepted
    (tmp_path / "empty").mkdir()
    assert _export_cli(tmp_path / "empty", "--module", "tests.tiny_models:small_cnn") == 0
    # unwritable location: the parent is a file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _export_cli(blocker / "sub", "--module", "tests.tiny_models:small_cnn") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot create the output folder" in err


def test_argument_errors(tmp_path):
    with pytest.raises(ExportError, match="exactly one"):
        export_classifier(tmp_path / "o")
    with pytest.raises(ExportError, match="--resize"):
        export_classifier(tmp_path / "o", module="tests.tiny_models:small_cnn", input_size=SIZE, resize=SIZE - 1)
    with pytest.raises(ExportError, match="--opset"):
        export_classifier(tmp_path / "o", module="tests.tiny_models:small_cnn", opset=5)
    with pytest.raises(ExportError, match="--checkpoint goes with --module"):
        export_classifier(tmp_path / "o", torchvision="resnet18", checkpoint="x.pt")


def test_torchvision_missing_gives_clear_error(tmp_path, capsys, monkeypatch):
    import sys

    # make torchvision unimportable whatever this machine has (a real one, or another test's stand-in)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert main(["export", "classifier", "--out", str(tmp_path / "tv"), "--torchvision", "resnet18"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "torchvision is not installed" in err and "--module" in err
    assert not (tmp_path / "tv").exists() and _no_leftovers(tmp_path)


class _FakeWeights:
    """Stands in for a torchvision weights enum member."""

    meta: ClassVar[dict] = {"categories": [f"tv{i}" for i in range(tiny_models.NUM_CLASSES)]}

    def __str__(self) -> str:
        return "SmallCNN_Weights.IMAGENET1K_V1"

    def transforms(self):
        import types

        return types.SimpleNamespace(crop_size=[SIZE], resize_size=[RESIZE + 2], mean=[0.5, 0.5, 0.5],
                                     std=[0.25, 0.25, 0.25])


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A torchvision with ``models.get_model`` / ``get_model_weights`` serving the tiny CNN as 'small_cnn'."""
    import sys
    import types

    calls = []
    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.0+fake"
    models = types.ModuleType("torchvision.models")

    def get_model(name, weights=None):
        calls.append((name, weights))
        if name != "small_cnn":
            raise ValueError(f"Unknown model {name}")
        model = tiny_models.small_cnn()
        if weights is not None:  # "pretrained": recognisably different weights
            with torch.no_grad():
                model.fc.weight.mul_(3)
        return model

    def get_model_weights(name):
        return types.SimpleNamespace(DEFAULT=_FakeWeights())

    models.get_model = get_model
    models.get_model_weights = get_model_weights
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


def test_torchvision_path(tmp_path, fake_torchvision):
    fc = tiny_models.small_cnn().fc.weight.detach().numpy()
    m = export_classifier(tmp_path / "rand", torchvision="small_cnn", input_size=SIZE, resize=RESIZE)
    assert m["source"]["torchvision"] == "small_cnn" and "random" in m["source"]["weights_note"]
    assert m["labels"] is None
    m = export_classifier(tmp_path / "def", torchvision="small_cnn", weights="default", input_size=SIZE,
                          resize=RESIZE)
    assert m["source"]["weights"] == "SmallCNN_Weights.IMAGENET1K_V1"
    assert m["labels"] == _FakeWeights.meta["categories"]
    # explicit preprocessing options are kept, the weights' recommendation noted
    assert m["preprocess"]["resize"] == RESIZE and "recommend" in m["source"]["preprocess_note"]
    np.testing.assert_allclose(np.load(tmp_path / "def" / "head.npz")["weight"], 3 * fc, rtol=1e-6)
    state = tiny_models.small_cnn().state_dict()
    state["fc.bias"] = state["fc.bias"] + 1
    torch.save(state, tmp_path / "w.pth")
    m = export_classifier(tmp_path / "path", torchvision="small_cnn", weights=tmp_path / "w.pth",
                          input_size=SIZE, resize=RESIZE)
    np.testing.assert_allclose(np.load(tmp_path / "path" / "head.npz")["bias"], state["fc.bias"].numpy())
    # options at their defaults: the weights' preprocessing is used, and said so
    m = export_classifier(tmp_path / "pre", torchvision="small_cnn", weights="default")
    assert m["preprocess"]["crop"] == SIZE and m["preprocess"]["resize"] == RESIZE + 2
    assert m["preprocess"]["mean"] == [0.5, 0.5, 0.5] and "transforms" in m["source"]["preprocess"]
    with pytest.raises(ExportError, match="Unknown model"):
        export_classifier(tmp_path / "unknown", torchvision="resnet9000", input_size=SIZE, resize=RESIZE)
    with pytest.raises(CheckpointError):
        export_classifier(tmp_path / "bad", torchvision="small_cnn", weights=tmp_path / "nope.pth",
                          input_size=SIZE, resize=RESIZE)


# --------------------------------------------------------------------------- feature map (issue 10)
def _torch_map(factory: str, module: str, x: np.ndarray, tensor: str = "output") -> np.ndarray:
    model = getattr(tiny_models, factory)()
    got = {}
    layer = dict(model.named_modules())[module]

    def keep_first(mod, args, out) -> None:  # a hook returning a value would replace the output
        got.setdefault("map", args[0] if tensor == "input" else out)

    layer.register_forward_hook(keep_first)
    with torch.no_grad():
        model(torch.from_numpy(x))
    return got["map"].numpy()


@pytest.mark.parametrize(
    "factory, layer, tensor, exact",
    [
        ("small_cnn", "body", "output", True),  # ResNet-like: pool module → flatten → fc
        ("efficient_head_cnn", "features", "output", True),  # EfficientNet-like
        ("functional_pool_cnn", "features", "output", True),  # MobileNetV2: pooling is a function
        ("convnext_like", "avgpool", "input", False),  # pool → LayerNorm → head
    ],
)
def test_feature_map_found_automatically(tmp_path, factory, layer, tensor, exact):
    m = export_classifier(tmp_path / "out", module=f"tests.tiny_models:{factory}", input_size=SIZE, resize=RESIZE)
    assert m["outputs"]["feature_map"] == "feature_map"
    assert m["source"]["feature_map_layer"] == layer and tensor in m["source"]["feature_map"]
    assert m["validation"]["max_abs_diff"]["feature_map"] <= m["validation"]["tolerance"]["feature_map"]
    x = np.random.default_rng(4).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    got = _ort_run(tmp_path / "out", x)
    fmap = got["feature_map"]
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, tiny_models.FEATURE_DIM) and fmap.shape[2] * fmap.shape[3] > 1
    np.testing.assert_allclose(fmap, _torch_map(factory, layer, x, tensor), atol=PARITY_ATOL)
    pooled = fmap.mean(axis=(2, 3))
    assert np.allclose(pooled, got["features"], atol=1e-5) == exact
    if exact:  # CAM: the class map W·F averaged over the map is the logits (minus the bias)
        head = np.load(tmp_path / "out" / "head.npz")
        cam = np.einsum("kd,bdhw->bkhw", head["weight"], fmap)
        np.testing.assert_allclose(cam.mean(axis=(2, 3)) + head["bias"], got["logits"], atol=1e-4)


@pytest.mark.parametrize("factory", ["tiny_vit", "sequential_head_cnn", "decoy_linear_cnn"])
def test_networks_without_a_feature_map_say_so(tmp_path, factory):
    m = export_classifier(tmp_path / "out", module=f"tests.tiny_models:{factory}", input_size=SIZE, resize=RESIZE)
    assert m["outputs"].get("feature_map") is None
    assert m["source"]["feature_map_layer"] is None and m["source"]["feature_map"].startswith("none")
    assert "feature_map" not in _ort_run(tmp_path / "out", np.zeros((1, 3, SIZE, SIZE), np.float32))


def test_feature_map_layer_override_and_errors(tmp_path):
    m = export_classifier(tmp_path / "pool", module="tests.tiny_models:small_cnn", feature_map_layer="pool",
                          input_size=SIZE, resize=RESIZE)
    assert m["source"]["feature_map_layer"] == "pool" and "input of 'pool'" in m["source"]["feature_map"]
    m = export_classifier(tmp_path / "body5", module="tests.tiny_models:small_cnn", feature_map_layer="body.5",
                          input_size=SIZE, resize=RESIZE)
    assert m["source"]["feature_map_layer"] == "body.5" and m["outputs"]["feature_map"] == "feature_map"
    cases = [
        ("small_cnn", "nope", "no such module"),
        ("small_cnn", "fc", "does not run before the final linear layer"),
        ("small_cnn", "body.0", "8 channels"),
        ("small_cnn", "body.3", "does not take the global average pooling"),  # before BN and ReLU
        ("tiny_vit", "conv_proj", "has no feature map"),  # a ViT: patches, no global average pooling
        ("tiny_vit", "ln", "not a B×C×h×w feature map"),
    ]
    for i, (factory, layer, message) in enumerate(cases):
        with pytest.raises(ExportError, match=message) as info:
            export_classifier(tmp_path / f"e{i}", module=f"tests.tiny_models:{factory}", feature_map_layer=layer,
                              input_size=SIZE, resize=RESIZE)
        assert "\n" not in str(info.value)
        assert not (tmp_path / f"e{i}").exists()
    assert _no_leftovers(tmp_path)


def test_nan_model_is_refused_in_one_line(tmp_path, capsys):
    """issue 14: a model whose logits are NaN is refused naming the model and the output, not the head."""
    assert _export_cli(tmp_path / "nan", "--module", "tests.tiny_models:nan_cnn") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "tests.tiny_models:nan_cnn" in err and "'logits'" in err and "NaN" in err
    assert "linear layer" not in err
    assert not (tmp_path / "nan").exists() and _no_leftovers(tmp_path)


def test_without_torch_the_export_says_so(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ExportError, match="needs PyTorch"):
        export_classifier(tmp_path / "o", module="tests.tiny_models:small_cnn")


@pytest.mark.slow
def test_resnet50_sized_export(tmp_path):
    """A ResNet-50 (bench's torchvision-layout copy, random weights) at 224: head found, parity holds."""
    pytest.importorskip("eac.bench.models")
    m = export_classifier(tmp_path / "r50", module="eac.bench.models:resnet50_factory")
    assert m["source"]["feature_layer"] == "fc" and m["feature_dim"] == 2048 and m["num_classes"] == 1000
    assert m["source"]["feature_map_layer"] == "layer4" and m["outputs"]["feature_map"] == "feature_map"
    assert all(m["validation"]["max_abs_diff"][k] <= m["validation"]["tolerance"][k] for k in ("logits", "features"))
