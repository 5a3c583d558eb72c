"""Model-parameter randomisation (eac.engine.randomise): copies change exactly the intended weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from eac.engine.cli import main
from eac.engine.errors import SanityError
from eac.engine.randomise import (
    ModelRandomiser,
    check_head,
    find_layers,
    randomise_model,
    reinitialise,
)
from onnx import TensorProto, helper, numpy_helper

#: The shipped demo classifier: 4 convs (batch norms folded in by the exporter) and the fc head.
DEMO_LAYERS = 5
#: IR version these tests write (this onnx writes newer IR than some onnxruntime builds read).
ORT_IR_VERSION = 8
#: A re-drawn tensor's mean and std must agree with the original's to this many standard errors.
STAT_SIGMAS = 5.0


def _initialisers(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _structure(model) -> bytes:
    """The graph without initialiser values (nodes, inputs, outputs, initialiser names and shapes)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        init.ClearField("raw_data")
        init.ClearField("float_data")
    return copy.SerializeToString()


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_layers_of_an_exported_cnn(demo_classifier_folder):
    r = ModelRandomiser(demo_classifier_folder)
    assert len(r.layers) == DEMO_LAYERS
    assert [layer.op_type for layer in r.layers] == ["Conv"] * 4 + ["Gemm"]
    assert [layer.index for layer in r.layers] == list(range(DEMO_LAYERS))
    assert all(len(layer.parameters) == 2 for layer in r.layers)  # weight and bias
    inits = _initialisers(r.model)
    assert all(inits[layer.parameters[0]].ndim in (2, 4) for layer in r.layers)
    assert r.head_binding is not None and r.head_binding.weight == r.layers[-1].parameters[0]
    cascade = r.steps("cascading")
    assert [s.layers for s in cascade] == [tuple(n for n in reversed(r.layer_names))[:k] for k in range(1, 6)]
    assert [s.layers for s in r.steps("independent")] == [(n,) for n in reversed(r.layer_names)]
    assert [s.count for s in r.steps("cascading", max_steps=2)] == [3, 5]  # evenly spaced, ends with all


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_copies_differ_where_intended_and_nowhere_else(demo_classifier_folder, tmp_path, mode):
    r = ModelRandomiser(demo_classifier_folder, seed=3)
    original = _initialisers(r.model)
    x = np.random.default_rng(0).standard_normal((2, 3, 128, 128)).astype(np.float32)
    base_logits = _run(r.model_file, x)[0]
    by_name = {layer.name: layer for layer in r.layers}
    for i, step in enumerate(r.steps(mode)):
        copy = r.write(step, tmp_path / f"{mode}-{i}")
        model = onnx.load(str(copy.folder / "classifier.onnx"))
        onnx.checker.check_model(model)
        assert _structure(model) == _structure(r.model)  # only initialiser values may differ
        intended = {p for name in step.layers for p in by_name[name].parameters}
        new = _initialisers(model)
        changed = {k for k in original if not np.array_equal(original[k], new[k])}
        assert changed == intended == set(copy.changed)
        for name in intended:
            old, now = original[name].astype(np.float64), new[name].astype(np.float64)
            se = old.std() / np.sqrt(old.size)
            assert abs(now.mean() - old.mean()) < STAT_SIGMAS * se + 1e-12
            assert abs(now.std() / old.std() - 1) < STAT_SIGMAS / np.sqrt(2 * old.size)
        logits = _run(copy.folder / "classifier.onnx", x)[0]
        assert np.isfinite(logits).all() and not np.allclose(logits, base_logits)
        classifier = copy.load()  # head.npz checked against the copy's logits
        head_layer = r.layers[-1]
        assert copy.head_randomised == (head_layer.name in step.layers)
        weight, bias = classifier.head
        assert np.array_equal(weight, new[head_layer.parameters[0]])
        assert np.array_equal(bias, new[head_layer.parameters[1]])
        assert check_head(classifier) < 1e-3


def test_draws_are_deterministic_and_consistent_along_the_cascade(demo_classifier_folder, tmp_path):
    a, b = ModelRandomiser(demo_classifier_folder, seed=1), ModelRandomiser(demo_classifier_folder, seed=1)
    other = ModelRandomiser(demo_classifier_folder, seed=2)
    steps = a.steps("cascading")
    first = _initialisers(randomise_model(a.model, a.select(steps[1].layers), 1)[0])
    again = _initialisers(randomise_model(b.model, b.select(steps[1].layers), 1)[0])
    later = _initialisers(randomise_model(a.model, a.select(steps[3].layers), 1)[0])
    different = _initialisers(randomise_model(other.model, other.select(steps[1].layers), 2)[0])
    head = a.layers[-1].parameters[0]
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert np.array_equal(first[head], later[head])  # a layer keeps its draws at every later step
    assert not np.array_equal(first[head], different[head])
    # the copies are removed once used, and the temporary folder at the end
    seen = []
    for copy in a.copies(steps[:2], root=tmp_path):
        seen.append(copy.folder)
        assert copy.folder.is_dir()
    assert not any(p.exists() for p in seen) and list(tmp_path.iterdir()) == []


def test_reinitialise_keeps_statistics_and_positivity():
    values = np.random.default_rng(0).normal(0.3, 0.05, 10_000).astype(np.float32)
    new = reinitialise(values, 0, "w")
    assert new.dtype == values.dtype and new.shape == values.shape
    assert abs(new.mean() - values.mean()) < 0.002 and abs(new.std() / values.std() - 1) < 0.03
    assert np.corrcoef(new, values)[0, 1] < 0.05  # new draws, not a copy
    variance = np.abs(values)
    permuted = reinitialise(variance, 0, "var", permute=True)
    assert np.array_equal(np.sort(permuted), np.sort(variance)) and not np.array_equal(permuted, variance)
    constant = np.ones(5, np.float32)
    assert np.array_equal(reinitialise(constant, 0, "c"), constant)  # no spread: nothing to re-draw


def _wild_model(weights_as_inputs: bool) -> onnx.ModelProto:
    """Conv → BatchNorm → Relu → GAP → Flatten → MatMul → Add → Softmax; opset 9, optionally weights as inputs."""
    rng = np.random.default_rng(0)
    k, d = 3, 6
    arrays = {
        "conv.w": rng.standard_normal((d, 3, 3, 3)).astype(np.float32),
        "bn.scale": rng.uniform(0.5, 1.5, d).astype(np.float32),
        "bn.bias": rng.standard_normal(d).astype(np.float32),
        "bn.mean": rng.standard_normal(d).astype(np.float32),
        "bn.var": rng.uniform(0.5, 2.0, d).astype(np.float32),
        "fc.w": rng.standard_normal((d, k)).astype(np.float32),
        "fc.b": rng.standard_normal(k).astype(np.float32),
    }
    inits = [numpy_helper.from_array(v, n) for n, v in arrays.items()]
    nodes = [
        helper.make_node("Conv", ["data_0", "conv.w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "fc.w"], ["m"]),
        helper.make_node("Add", ["m", "fc.b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["prob"], axis=1),
    ]
    inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 8, 8])]
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in arrays.items()]
    outputs = [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, k])]
    model = helper.make_model(helper.make_graph(nodes, "wild", inputs, outputs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 9)], producer_name="test")
    model.ir_version = 4 if weights_as_inputs else ORT_IR_VERSION
    onnx.checker.check_model(model)
    return model


def test_weights_stored_as_graph_inputs_norms_and_matmul_heads(tmp_path):
    model = _wild_model(weights_as_inputs=True)
    layers = find_layers(model)
    assert [(layer.op_type, layer.parameters) for layer in layers] == [
        ("Conv", ("conv.w", "bn.scale", "bn.bias", "bn.mean", "bn.var")), ("MatMul", ("fc.w", "fc.b"))]
    randomised, changed, unchanged = randomise_model(model, layers, seed=0)
    assert set(changed) == {p for layer in layers for p in layer.parameters} and unchanged == []
    assert [i.name for i in randomised.graph.input] == [i.name for i in model.graph.input]  # inputs kept
    onnx.checker.check_model(randomised)
    new, old = _initialisers(randomised), _initialisers(model)
    assert np.array_equal(np.sort(new["bn.var"]), np.sort(old["bn.var"]))  # permuted: still positive
    onnx.save(model, str(tmp_path / "a.onnx"))
    onnx.save(randomised, str(tmp_path / "b.onnx"))
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    before, after = _run(tmp_path / "a.onnx", x)[0], _run(tmp_path / "b.onnx", x)[0]
    assert np.isfinite(after).all() and np.allclose(after.sum(), 1.0, atol=1e-5)
    assert not np.allclose(before, after)


def test_preprocessing_constants_and_op_settings_are_not_weights():
    """In-graph mean/std before the first layer and Resize scales stay; a lone positional embedding is a layer."""
    rng = np.random.default_rng(0)
    arrays = {
        "mean": np.array([0.4, 0.5, 0.6], np.float32).reshape(1, 3, 1, 1),
        "std": np.array([0.2, 0.25, 0.3], np.float32).reshape(1, 3, 1, 1),
        "w": rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
        "scales": np.array([1, 1, 2, 2], np.float32),
        "pos": rng.standard_normal((1, 4, 16, 16)).astype(np.float32),
        "fc": rng.standard_normal((2, 4)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["s"]),
        helper.make_node("Div", ["s", "std"], ["n"]),
        helper.make_node("Conv", ["n", "w"], ["c"]),
        helper.make_node("Resize", ["c", "", "scales"], ["u"], mode="nearest"),
        helper.make_node("Add", ["u", "pos"], ["p"]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
                              initializer=[numpy_helper.from_array(v, n) for n, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    layers = find_layers(model)
    assert [(layer.op_type, layer.parameters) for layer in layers] == [
        ("Conv", ("w",)), ("Add", ("pos",)), ("Gemm", ("fc",))]


def test_imported_folder_head_follows_a_transposed_matmul_head(tmp_path):
    from eac.export.import_onnx import import_onnx

    src = tmp_path / "wild.onnx"
    onnx.save(_wild_model(weights_as_inputs=True), str(src))
    folder = tmp_path / "imported"
    import_onnx(src, folder)
    r = ModelRandomiser(folder)
    assert r.head_binding is not None and r.head_binding.transposed and r.head_binding.weight == "fc.w"
    copy = r.write(r.steps("independent")[0], tmp_path / "head-only")
    assert copy.head_randomised and copy.changed == ["fc.w", "fc.b"]
    check_head(copy.load())  # the rewritten head.npz reproduces the copy's probabilities
    # without the binding the old head.npz stays behind, and the check catches it
    r.head_binding = None
    stale = r.write(r.steps("independent")[0], tmp_path / "stale")
    assert not stale.head_randomised
    with pytest.raises(SanityError, match=r"head\.npz does not reproduce"):
        stale.load()


def _constant_weights_folder(tmp_path: Path) -> Path:
    """An imported classifier whose weights live in Constant nodes (no initialisers to rewrite)."""
    from eac.export.import_onnx import import_onnx

    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], rng.standard_normal(12).astype(np.float32))
    fc = helper.make_tensor("fc", TensorProto.FLOAT, [2, 4], rng.standard_normal(8).astype(np.float32))
    nodes = [
        helper.make_node("Constant", [], ["w"], value=w),
        helper.make_node("Constant", [], ["fcw"], value=fc),
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fcw"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "constants", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ORT_IR_VERSION
    src = tmp_path / "constants.onnx"
    onnx.save(model, str(src))
    import_onnx(src, tmp_path / "constants")
    return tmp_path / "constants"


def test_bad_input_gets_one_line(tmp_path, demo_classifier_folder, capsys):
    folder = _constant_weights_folder(tmp_path)
    with pytest.raises(SanityError, match="no weights to randomise"):
        ModelRandomiser(folder)
    r = ModelRandomiser(demo_classifier_folder)
    with pytest.raises(SanityError, match=r"no layer named 'nope'.*features\.0/Conv"):
        r.steps("cascading", ["nope"])
    with pytest.raises(SanityError, match="mode"):
        r.steps("sideways")
    image = tmp_path / "x.png"
    image.write_bytes(b"")  # never read: the layer name fails first
    for argv, words in (
        (["--layers", "nope"], "no layer named 'nope'"),
        (["--classifier", str(folder)], "no weights to randomise"),
    ):
        args = ["sanity", str(image), "--classifier", str(demo_classifier_folder), *argv, "--out",
                str(tmp_path / "out")]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("eac: error:") and words in err[0]
