"""`eac import-onnx` on ONNX files written here with the awkward properties of files found in the wild."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from eac.engine.classifier import Classifier
from eac.engine.cli import main
from eac.export.errors import ExportError
from eac.export.import_onnx import import_onnx
from onnx import TensorProto, helper, numpy_helper

K = 4
D = 6
HW = 8
#: IR version written by these tests (this onnx writes newer IR than some onnxruntime builds read).
ORT_IR_VERSION = 8
#: Same graph, same input: the imported folder reproduces the original file to float rounding.
ATOL = 1e-5


def _graph_classifier(
    path: Path,
    *,
    layout: str = "NCHW",
    batch: int | str | None = 1,
    tail: str = "none",
    features: bool = False,
    opset: int = 9,
    hw: tuple = (HW, HW),
    input_name: str = "data_0:0",
    init_as_inputs: bool = True,
    seed: int = 0,
    head: str = "gemm",
    pool: str = "gap",
) -> Path:
    """Write a tiny classifier with onnx.helper: 1×1 conv → ReLU → global pool → flatten → Gemm → tail.

    tail: "none" (logits), "softmax" (a Softmax node), "manual_softmax" (Exp/ReduceSum/Div), "cast" (a Cast
    to float32), "float16_round_trip" (Casts to float16 and back: the values change),
    "conv_head" (the classifier is a 1×1 conv: output B×K×1×1).
    head: "gemm" (Gemm, weight K×D, transB=1), "matmul" (MatMul by a D×K weight, then Add).
    pool: "gap" (GlobalAveragePool → Flatten), "reducemean" (ReduceMean over H, W, keepdims=0).
    """
    rng = np.random.default_rng(seed)
    conv_w = numpy_helper.from_array(rng.standard_normal((D, 3, 1, 1)).astype(np.float32), "conv.w:0")
    fc_w_array = rng.standard_normal((K, D)).astype(np.float32)
    fc_w = numpy_helper.from_array(fc_w_array if head == "gemm" else fc_w_array.T.copy(), "fc.w:0")
    fc_b = numpy_helper.from_array(rng.standard_normal(K).astype(np.float32), "fc.b:0")
    head_w = numpy_helper.from_array(rng.standard_normal((K, D, 1, 1)).astype(np.float32), "head.w:0")
    inits = [conv_w, fc_w, fc_b] + ([head_w] if tail == "conv_head" else [])
    h, w = hw
    in_shape = [batch, 3, h, w] if layout == "NCHW" else [batch, h, w, 3]
    nodes = []
    x = input_name
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [
        helper.make_node("Conv", [x, "conv.w:0"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
    ]
    if pool == "reducemean":
        nodes[-1] = helper.make_node("ReduceMean", ["r"], ["pool:0"], axes=[2, 3], keepdims=0)
    out_batch = batch if batch is not None else "N"
    outputs = []
    if tail == "conv_head":
        nodes.append(helper.make_node("Conv", ["g", "head.w:0"], ["scores:0"]))
        outputs.append(helper.make_tensor_value_info("scores:0", TensorProto.FLOAT, [out_batch, K, 1, 1]))
    else:
        if pool == "gap":
            nodes.append(helper.make_node("Flatten", ["g"], ["pool:0"], axis=1))
        if head == "gemm":
            nodes.append(helper.make_node("Gemm", ["pool:0", "fc.w:0", "fc.b:0"], ["fc:0"], transB=1))
        else:
            nodes += [helper.make_node("MatMul", ["pool:0", "fc.w:0"], ["mm"]),
                      helper.make_node("Add", ["fc.b:0", "mm"], ["fc:0"])]
        final = "fc:0"
        if tail == "softmax":
            nodes.append(helper.make_node("Softmax", ["fc:0"], ["prob:0"], axis=1))
            final = "prob:0"
        elif tail in ("cast", "float16_round_trip"):  # eac's own exporter ends with a Cast to float32
            if tail == "float16_round_trip":
                nodes.append(helper.make_node("Cast", ["fc:0"], ["half"], to=TensorProto.FLOAT16))
            nodes.append(helper.make_node("Cast", ["half" if tail == "float16_round_trip" else "fc:0"],
                                          ["logits"], to=TensorProto.FLOAT))
            final = "logits"
        elif tail == "manual_softmax":
            nodes += [
                helper.make_node("Exp", ["fc:0"], ["e"]),
                helper.make_node("ReduceSum", ["e"], ["s"], axes=[1], keepdims=1),
                helper.make_node("Div", ["e", "s"], ["prob:0"]),
            ]
            final = "prob:0"
        outputs.append(helper.make_tensor_value_info(final, TensorProto.FLOAT, [out_batch, K]))
        if features:
            outputs.append(helper.make_tensor_value_info("pool:0", TensorProto.FLOAT, [out_batch, D]))
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)]
    if init_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "wild", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="test")
    model.ir_version = 4 if opset <= 9 else ORT_IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _original_run(path: Path, x_nchw: np.ndarray, layout: str = "NCHW", batch: int = 1) -> np.ndarray:
    """Run the original file item by item (its batch is fixed)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    xs = x_nchw if layout == "NCHW" else x_nchw.transpose(0, 2, 3, 1)
    return np.concatenate([sess.run(None, {name: xs[i : i + batch]})[0] for i in range(0, len(xs), batch)])


def _batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, HW, HW)).astype(np.float32)


def _direct(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What `_graph_classifier(seed=seed)` computes, in numpy: (logits B×K, features B×D, map B×D×h×w)."""
    rng = np.random.default_rng(seed)
    conv_w = rng.standard_normal((D, 3, 1, 1)).astype(np.float32)
    fc_w = rng.standard_normal((K, D)).astype(np.float32)
    fc_b = rng.standard_normal(K).astype(np.float32)
    fmap = np.maximum(np.einsum("dc,bchw->bdhw", conv_w[:, :, 0, 0], x), 0.0)
    features = fmap.mean(axis=(2, 3))
    return features @ fc_w.T + fc_b, features, fmap


def _ort_outputs(folder: Path, x: np.ndarray, manifest: dict) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(folder / "classifier.onnx"), providers=["CPUExecutionProvider"])
    names = {role: name for role, name in manifest["outputs"].items() if name is not None}
    return dict(zip(names, sess.run(list(names.values()), {manifest["input"]["name"]: x}), strict=True))


def test_wild_softmax_file_opset9(tmp_path):
    src = _graph_classifier(tmp_path / "wild.onnx", tail="softmax")
    assert len(onnx.load(str(src)).graph.input) == 4  # weights listed as inputs
    m = import_onnx(src, tmp_path / "out")
    assert m["opset"] == 9
    assert m["input"]["name"] == "data_0:0" and m["input"]["batch"] is None and m["input"]["layout"] == "NCHW"
    # the Gemm is found: its input is the features, the global pool's input the feature map
    assert m["outputs"] == {"logits": "prob:0", "features": "pool:0", "feature_map": "r"}
    assert m["output_kind"] == "probabilities" and "Softmax" in m["source"]["output_kind_reason"]
    assert m["num_classes"] == K and m["feature_dim"] == D and "head" in m["files"]
    assert m["validation"]["batch_check"]["dynamic"] is True
    assert any("initializers removed" in r for r in m["source"]["rewrites"])
    assert any("dynamic" in r for r in m["source"]["rewrites"])
    # defaults are reported, not silently assumed
    assert m["preprocess"]["crop"] == HW and m["preprocess"]["resize"] == round(HW * 256 / 224)
    assert "ImageNet mean" in m["source"]["assumed"]
    imported = onnx.load(str(tmp_path / "out" / "classifier.onnx"))
    assert [i.name for i in imported.graph.input] == ["data_0:0"]
    assert imported.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    clf = Classifier.from_folder(tmp_path / "out")
    x = _batch(5)
    np.testing.assert_allclose(clf(x), np.log(_original_run(src, x)), atol=ATOL)


def test_hard_coded_batch_stays_fixed_and_runtime_batches(tmp_path):
    torch = pytest.importorskip("torch")
    from tests import tiny_models

    class HardBatch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = tiny_models.small_cnn()

        def forward(self, x):
            return torch.softmax(self.m.fc(self.m.pool(self.m.body(x)).reshape(1, -1)), dim=1)

    src = tmp_path / "hard.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(HardBatch().eval(), (torch.zeros(1, 3, HW, HW),), str(src), input_names=["input.1"],
                          output_names=["output:0"], opset_version=9, dynamo=False, keep_initializers_as_inputs=True)
    m = import_onnx(src, tmp_path / "out")
    assert m["input"]["batch"] == 1
    check = m["validation"]["batch_check"]
    assert check["dynamic"] is False and check["reason"]
    assert not any("dynamic" in r for r in m["source"]["rewrites"])
    clf = Classifier.from_folder(tmp_path / "out")
    assert clf.max_batch == 1 and clf.output_kind == "probabilities"
    x = _batch(6)
    logp = clf(x)
    np.testing.assert_allclose(logp, np.log(_original_run(src, x)), atol=ATOL)
    with torch.no_grad():
        ref = torch.log_softmax(tiny_models.small_cnn()(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(logp, ref, atol=1e-4)


def test_fixed_batch_larger_than_one(tmp_path):
    src = _graph_classifier(tmp_path / "b3.onnx", batch=3)
    m = import_onnx(src, tmp_path / "out")
    assert m["input"]["batch"] is None  # this graph allows any batch size
    x = _batch(5)
    ref = _original_run(src, np.concatenate([x, np.zeros((1, 3, HW, HW), np.float32)]), batch=3)[:5]
    np.testing.assert_allclose(Classifier.from_folder(tmp_path / "out")(x), ref, atol=ATOL)


def test_softmax_detected_from_values(tmp_path):
    src = _graph_classifier(tmp_path / "manual.onnx", tail="manual_softmax")
    m = import_onnx(src, tmp_path / "out")
    assert m["output_kind"] == "probabilities"
    assert "sum to 1" in m["source"]["output_kind_reason"]


def test_logits_model_and_forced_probabilities(tmp_path):
    src = _graph_classifier(tmp_path / "logits.onnx", tail="none")
    m = import_onnx(src, tmp_path / "a")
    assert m["output_kind"] == "logits"
    clf = Classifier.from_folder(tmp_path / "a")
    x = _batch(3)
    np.testing.assert_allclose(clf(x), _original_run(src, x), atol=ATOL)
    src2 = _graph_classifier(tmp_path / "p.onnx", tail="manual_softmax")
    assert main(["import-onnx", str(src2), "--out", str(tmp_path / "b"), "--probabilities"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["output_kind"] == "probabilities" and "given" in manifest["source"]["output_kind_reason"]
    assert import_onnx(src2, tmp_path / "c", probabilities=False)["output_kind"] == "logits"


def test_nhwc_input(tmp_path):
    src = _graph_classifier(tmp_path / "nhwc.onnx", layout="NHWC", tail="softmax", input_name="images")
    m = import_onnx(src, tmp_path / "out")
    assert m["input"]["layout"] == "NHWC" and m["input"]["height"] == HW
    clf = Classifier.from_folder(tmp_path / "out")
    x = _batch(3)
    np.testing.assert_allclose(clf(x), np.log(_original_run(src, x, layout="NHWC")), atol=ATOL)


def test_conv_head_output_is_flattened(tmp_path):
    src = _graph_classifier(tmp_path / "conv.onnx", tail="conv_head", opset=11)
    m = import_onnx(src, tmp_path / "out")
    assert m["outputs"]["logits"] != "scores:0" and any("flattened" in r for r in m["source"]["rewrites"])
    # a 1×1 conv head is no Gemm/MatMul: no features, no head, and the manifest says why
    assert m["outputs"]["features"] is None and m["outputs"].get("feature_map") is None
    assert "head" not in m["files"] and "Conv" in m["source"]["head"]["reason"]
    clf = Classifier.from_folder(tmp_path / "out")
    x = _batch(3)
    np.testing.assert_allclose(clf(x), _original_run(src, x).reshape(3, K), atol=ATOL)


def test_features_output(tmp_path):
    src = _graph_classifier(tmp_path / "f.onnx", features=True, tail="none")
    plain = import_onnx(src, tmp_path / "plain")  # found: the graph output that is the Gemm's input
    assert plain["outputs"]["features"] == "pool:0" and plain["source"]["other_outputs"] == {}
    m = import_onnx(src, tmp_path / "out", features_output="pool:0")
    assert m["outputs"] == {"logits": "fc:0", "features": "pool:0", "feature_map": "r"}
    assert m["feature_dim"] == D and "head" in m["files"]
    clf = Classifier.from_folder(tmp_path / "out")
    out = clf.run(_batch(2))
    assert out.features.shape == (2, D) and clf.head is not None
    with pytest.raises(ExportError, match="not an output"):
        import_onnx(src, tmp_path / "bad", features_output="nope")
    assert not (tmp_path / "bad").exists()


def test_features_output_accepts_an_intermediate_tensor(tmp_path):
    """`g` (GlobalAveragePool, B×D×1×1) is no graph output: it is added, flattened, and is not the Gemm input."""
    src = _graph_classifier(tmp_path / "f.onnx", tail="softmax")
    m = import_onnx(src, tmp_path / "out", features_output="g")
    assert m["outputs"]["features"] not in (None, "g") and m["feature_dim"] == D
    assert any("exposed" in r for r in m["source"]["rewrites"])
    assert any("flattened" in r for r in m["source"]["rewrites"])
    assert "head" not in m["files"] and "not the input" in m["source"]["head"]["reason"]
    x = _batch(3)
    sess = ort.InferenceSession(str(tmp_path / "out" / "classifier.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run([m["outputs"]["features"]], {"data_0:0": x})[0]
    np.testing.assert_allclose(got, _direct(x)[1], atol=ATOL)
    with pytest.raises(ExportError, match="not B×D"):  # the 4-D map itself is no features tensor
        import_onnx(src, tmp_path / "bad", features_output="r")
    assert not (tmp_path / "bad").exists()


def test_dynamic_spatial_size_needs_input_size(tmp_path):
    src = _graph_classifier(tmp_path / "dyn.onnx", batch="N", hw=("H", "W"), opset=13, init_as_inputs=False)
    with pytest.raises(ExportError, match="--input-size"):
        import_onnx(src, tmp_path / "a")
    m = import_onnx(src, tmp_path / "b", input_size=HW, resize=10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert m["input"]["height"] == HW and m["input"]["batch"] is None
    assert m["source"]["assumed"] == []
    assert Classifier.from_folder(tmp_path / "b")(_batch(2)).shape == (2, K)
    with pytest.raises(ExportError, match="--input-size"):
        import_onnx(_graph_classifier(tmp_path / "s.onnx"), tmp_path / "c", input_size=HW * 2)


def _model(graph) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ORT_IR_VERSION
    return model


def _two_input_model(path: Path) -> Path:
    a = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, HW, HW])
    b = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 3, HW, HW])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, HW, HW])
    graph = helper.make_graph([helper.make_node("Add", ["image", "mask"], ["y"])], "g", [a, b], [y])
    onnx.save(_model(graph), str(path))
    return path


def _segmenter(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((K, 3, 1, 1)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, HW, HW])
    y = helper.make_tensor_value_info("seg", TensorProto.FLOAT, [1, K, HW, HW])
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["seg"])], "g", [x], [y], initializer=[w])
    onnx.save(_model(graph), str(path))
    return path


def _gray_input(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, HW, HW])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, HW * HW])
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"], axis=1)], "g", [x], [y])
    onnx.save(_model(graph), str(path))
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (_two_input_model, ["exactly one image input", "image", "mask"]),
        (_segmenter, ["no B×K output", "seg", f"[1, {K}, {HW}, {HW}, 'float32']"]),
        (_gray_input, ["3-channel", "x [1, 1, 8, 8]"]),
    ],
)
def test_non_classifiers_refused(tmp_path, capsys, make, words):
    src = make(tmp_path / "m.onnx")
    assert main(["import-onnx", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for word in words:
        assert word in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_bad_files_and_folders(tmp_path):
    with pytest.raises(ExportError, match="no such ONNX file"):
        import_onnx(tmp_path / "missing.onnx", tmp_path / "a")
    with pytest.raises(ExportError, match=r"is a folder; give the \.onnx file"):  # it said "no such ONNX file"
        import_onnx(tmp_path, tmp_path / "a")
    from eac.engine import Classifier
    from eac.engine.errors import ModelFolderError

    onnx_file = _graph_classifier(tmp_path / "mine.onnx")
    with pytest.raises(ModelFolderError, match="eac import-onnx"):  # a file where a folder is expected: how to adopt
        Classifier.from_folder(onnx_file)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(ExportError, match="not a readable ONNX model"):
        import_onnx(junk, tmp_path / "b")
    src = _graph_classifier(tmp_path / "ok.onnx")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="not an empty folder"):
        import_onnx(src, tmp_path / "full")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(ExportError, match=f"2 labels but the model has {K} classes"):
        import_onnx(src, tmp_path / "c", labels=labels)
    labels.write_text("".join(f"class {i}\n" for i in range(K)))
    assert import_onnx(src, tmp_path / "d", labels=labels)["labels"] == [f"class {i}" for i in range(K)]


def test_too_new_ir_version_is_lowered(tmp_path):
    src = _graph_classifier(tmp_path / "new.onnx", opset=13, init_as_inputs=False)
    model = onnx.load(str(src))
    model.ir_version = onnx.IR_VERSION  # what `helper.make_model` writes with this onnx
    onnx.save(model, str(src))
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    try:
        ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    except Fail:
        pass  # the situation under test: this onnxruntime refuses the file as it is
    else:
        pytest.skip("this onnxruntime reads the newest IR version")
    m = import_onnx(src, tmp_path / "out")
    assert any("IR version lowered" in r for r in m["source"]["rewrites"])
    x = _batch(2)
    ref = ort.InferenceSession(str(tmp_path / "out" / "classifier.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(Classifier.from_folder(tmp_path / "out")(x), ref.run(None, {"data_0:0": x})[0])


def test_non_square_input(tmp_path):
    src = _graph_classifier(tmp_path / "wide.onnx", hw=(HW, HW + 4))
    m = import_onnx(src, tmp_path / "out")
    assert m["preprocess"]["crop"] == [HW, HW + 4]
    assert m["preprocess"]["resize"] == round((HW + 4) * 256 / 224)
    clf = Classifier.from_folder(tmp_path / "out")
    assert clf.input_hw == (HW, HW + 4)
    for shape in ((30, 20, 3), (20, 30, 3)):  # portrait and landscape both fit
        crop, frame = clf.crop(np.zeros(shape, np.uint8))
        assert crop.shape == (HW, HW + 4, 3) and frame.hw == (HW, HW + 4)
    assert clf.run(clf.normalize(crop)).logits.shape == (1, K)


def test_float16_input(tmp_path):
    src = _graph_classifier(tmp_path / "f32.onnx", opset=13, init_as_inputs=False, input_name="x32")
    model = onnx.load(str(src))
    graph = model.graph
    graph.input[0].name = "image_fp16"
    graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    graph.node.insert(0, helper.make_node("Cast", ["image_fp16"], ["x32"], to=TensorProto.FLOAT))
    model.ir_version = ORT_IR_VERSION
    onnx.save(model, str(tmp_path / "f16.onnx"))
    m = import_onnx(tmp_path / "f16.onnx", tmp_path / "out")
    assert m["input"]["dtype"] == "float16" and m["precision"] == "fp16"
    x = _batch(3)
    got = Classifier.from_folder(tmp_path / "out")(x)
    ref = _original_run(src, x.astype(np.float16).astype(np.float32))  # the fp16 rounding of the input
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=ATOL)


def test_recorded_intermediate_shapes_do_not_block_dynamic_batch(tmp_path):
    src = _graph_classifier(tmp_path / "plain.onnx", tail="softmax")
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    assert len(inferred.graph.value_info) > 0  # batch-1 shapes of intermediate tensors
    onnx.save(inferred, str(tmp_path / "inferred.onnx"))
    m = import_onnx(tmp_path / "inferred.onnx", tmp_path / "out")
    assert m["input"]["batch"] is None
    assert len(onnx.load(str(tmp_path / "out" / "classifier.onnx")).graph.value_info) == 0
    x = _batch(4)
    np.testing.assert_allclose(Classifier.from_folder(tmp_path / "out")(x), np.log(_original_run(src, x)),
                               atol=ATOL)


def test_integer_outputs_are_not_logits(tmp_path):
    """A top-k class-index output (int64, B×k) listed first must not be taken for the logits."""
    src = _graph_classifier(tmp_path / "p.onnx", tail="softmax", opset=13, init_as_inputs=False)
    model = onnx.load(str(src))
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    model.graph.initializer.append(k)
    model.graph.node.append(helper.make_node("TopK", ["prob:0", "k"], ["top_values", "top_classes"], axis=1))
    model.graph.output.insert(0, helper.make_tensor_value_info("top_classes", TensorProto.INT64, [1, 2]))
    onnx.save(model, str(src))
    m = import_onnx(src, tmp_path / "out")
    assert m["outputs"]["logits"] == "prob:0" and m["num_classes"] == K
    assert m["source"]["other_outputs"] == {"top_classes": [1, 2, "int64"]}


# --------------------------------------------------------------------------- the final linear layer
@pytest.mark.parametrize(
    "head, pool, tail, opset",
    [
        ("gemm", "gap", "none", 9),
        ("gemm", "gap", "softmax", 11),
        ("matmul", "gap", "none", 11),
        ("matmul", "reducemean", "softmax", 11),
        ("gemm", "reducemean", "none", 13),
        ("gemm", "gap", "cast", 13),
    ],
)
def test_head_features_and_feature_map_are_found(tmp_path, head, pool, tail, opset):
    """Gemm or MatMul+Add, after GlobalAveragePool or ReduceMean, softmax or not, weights as inputs."""
    src = _graph_classifier(tmp_path / "m.onnx", tail=tail, opset=opset, head=head, pool=pool)
    m = import_onnx(src, tmp_path / "out")
    assert m["feature_dim"] == D and m["outputs"]["feature_map"] == "r"
    assert m["source"]["head"]["op"] == ("Gemm" if head == "gemm" else "MatMul+Add")
    assert m["source"]["head"]["then"] == {"softmax": ["Softmax"], "cast": ["Cast"]}.get(tail, [])
    assert m["validation"]["head_max_abs_diff"] < ATOL
    assert m["validation"]["feature_map_pool_max_abs_diff"] < ATOL
    x = _batch(3)
    logits, features, fmap = _direct(x)
    got = _ort_outputs(tmp_path / "out", x, m)
    np.testing.assert_allclose(got["features"], features, atol=ATOL)
    np.testing.assert_allclose(got["feature_map"], fmap, atol=ATOL)
    assert got["feature_map"].shape == (3, D, HW, HW)
    with np.load(tmp_path / "out" / "head.npz") as npz:
        weight, bias = npz["weight"], npz["bias"]
    assert weight.shape == (K, D) and bias.shape == (K,) and weight.dtype == np.float32
    np.testing.assert_allclose(features @ weight.T + bias, logits, atol=ATOL)
    # the folder runs in the engine with its head
    clf = Classifier.from_folder(tmp_path / "out")
    assert clf.head is not None and clf.run(x).features.shape == (3, D)


def test_a_cast_that_changes_the_values_ends_the_head_search(tmp_path):
    # float32 → float16 → float32 rounds the logits: the Gemm before it is not taken as their linear layer
    src = _graph_classifier(tmp_path / "m.onnx", tail="float16_round_trip", opset=13)
    m = import_onnx(src, tmp_path / "out")
    assert m["source"]["head"]["file"] is None and "Cast" in m["source"]["head"]["reason"]
    assert m["outputs"]["feature_map"] is None


def test_torch_exported_cnn_opset11_with_softmax(tmp_path):
    """A torch CNN exported as found in the wild (batch 1, weights as inputs, softmax, opset 11)."""
    torch = pytest.importorskip("torch")
    from tests import tiny_models

    model = tiny_models.softmax_cnn()
    src = tmp_path / "cnn.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, HW * 4, HW * 4),), str(src), input_names=["input.1"],
                          output_names=["probs"], opset_version=11, dynamo=False,
                          keep_initializers_as_inputs=True)
    m = import_onnx(src, tmp_path / "out")
    assert m["output_kind"] == "probabilities" and m["input"]["batch"] is None
    assert m["feature_dim"] == tiny_models.FEATURE_DIM and m["outputs"]["feature_map"] is not None
    x = np.random.default_rng(3).standard_normal((2, 3, HW * 4, HW * 4)).astype(np.float32)
    captured = {}
    model.fc.register_forward_hook(lambda mod, args, out: captured.__setitem__("features", args[0]))
    model.body.register_forward_hook(lambda mod, args, out: captured.__setitem__("map", out))
    with torch.no_grad():
        model(torch.from_numpy(x))
    got = _ort_outputs(tmp_path / "out", x, m)
    np.testing.assert_allclose(got["features"], captured["features"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["feature_map"], captured["map"].numpy(), atol=1e-4)
    with np.load(tmp_path / "out" / "head.npz") as npz:
        np.testing.assert_allclose(npz["weight"], model.fc.weight.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(npz["bias"], model.fc.bias.detach().numpy(), atol=1e-6)


def _nhwc_reducemean_classifier(path: Path) -> Path:
    """NHWC all the way: x B×H×W×3 @ W (3×D) → ReLU → ReduceMean(axes 1, 2) → Gemm (TF-converted style)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((3, D)).astype(np.float32), "proj"),
             numpy_helper.from_array(rng.standard_normal((K, D)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(K).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["images", "proj"], ["m"]),
             helper.make_node("Relu", ["m"], ["map_nhwc"]),
             helper.make_node("ReduceMean", ["map_nhwc"], ["feat"], axes=[1, 2], keepdims=0),
             helper.make_node("Gemm", ["feat", "w", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "nhwc", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, HW, HW, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, K])], initializer=inits)
    onnx.save(_model(graph), str(path))
    return path


def test_nhwc_feature_map_is_transposed_to_nchw(tmp_path):
    src = _nhwc_reducemean_classifier(tmp_path / "nhwc.onnx")
    m = import_onnx(src, tmp_path / "out")
    assert m["input"]["layout"] == "NHWC" and "NHWC" in m["source"]["feature_map"]
    x = np.random.default_rng(2).standard_normal((2, HW, HW, 3)).astype(np.float32)
    got = _ort_outputs(tmp_path / "out", x, m)
    proj = onnx.numpy_helper.to_array(onnx.load(str(src)).graph.initializer[0])
    fmap = np.maximum(x @ proj, 0.0)
    np.testing.assert_allclose(got["feature_map"], fmap.transpose(0, 3, 1, 2), atol=ATOL)
    np.testing.assert_allclose(got["features"], fmap.mean(axis=(1, 2)), atol=ATOL)
    assert "head" in m["files"]


def test_head_that_does_not_reproduce_the_logits_is_not_written(tmp_path, monkeypatch):
    from eac.export import import_onnx as import_mod

    monkeypatch.setattr(import_mod, "HEAD_ATOL", -1.0)  # nothing can pass: the check must refuse
    m = import_onnx(_graph_classifier(tmp_path / "m.onnx"), tmp_path / "out")
    assert "head" not in m["files"] and not (tmp_path / "out" / "head.npz").exists()
    assert "differs" in m["source"]["head"]["reason"] and m["validation"]["head_max_abs_diff"] >= 0
    assert m["outputs"]["features"] == "pool:0"  # the features stay useful without a head


@pytest.mark.parametrize("where", ["logits", "features"])
def test_nan_outputs_are_refused(tmp_path, capsys, where):
    """issue 14: a model producing NaN on a random input is refused in one line naming it and the output."""
    src = _graph_classifier(tmp_path / "m.onnx", opset=13, init_as_inputs=False)
    model = onnx.load(str(src))
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([-1.0], np.float32), "minus_one"))
    graph.node.append(helper.make_node("Sqrt", ["minus_one"], ["nan"]))
    bad = "bad_logits" if where == "logits" else "bad_features"
    graph.node.append(helper.make_node("Add", ["fc:0" if where == "logits" else "pool:0", "nan"], [bad]))
    extra = []
    if where == "logits":
        graph.output[0].name = bad
    else:  # NaN only in the features named with --features-output; the logits are fine
        extra = ["--features-output", bad]
    onnx.save(model, str(src))
    assert main(["import-onnx", str(src), "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NaN" in err and str(src) in err and repr(bad) in err
    assert not (tmp_path / "out").exists()
