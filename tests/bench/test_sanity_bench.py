"""`eac bench sanity` (eac.bench.sanity) on the session's trained scene classifier, reduced to a few methods."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from eac.bench import sanity
from eac.bench.harness import BenchError
from eac.bench.workloads import QUICK, BenchOptions, SceneModel
from onnx import TensorProto, helper, numpy_helper

#: A permuted-label model small enough for a test (it only has to exist and be explained).
TEST_TRAIN_N = 64
TEST_EPOCHS = 1


def _scene_model(trained_classifier) -> SceneModel:
    from eac.bench.reference import TorchClassifier
    from eac.bench.train_demo import MEAN, STD
    from eac.engine.classifier import Classifier

    folder = trained_classifier.folder
    net = sanity.scene_cnn_from_onnx(folder / "classifier.onnx")
    return SceneModel(folder, Classifier.from_folder(folder), TorchClassifier.from_module(net, MEAN, STD),
                      trained_classifier.size, "the test session's trained scene classifier")


def test_torch_copy_of_an_onnx_scene_model(trained_classifier, tmp_path):
    import onnxruntime as ort
    import torch

    path = trained_classifier.folder / "classifier.onnx"
    net = sanity.scene_cnn_from_onnx(path)
    x = np.random.default_rng(5).standard_normal((3, 3, trained_classifier.size, trained_classifier.size))
    x = x.astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]
    with torch.no_grad():
        assert np.allclose(net(torch.from_numpy(x)).numpy(), expected, rtol=1e-4, atol=1e-4)
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], initializer=[w])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(BenchError, match="not an exported SceneCNN"):
        sanity.scene_cnn_from_onnx(other)


@pytest.mark.slow
def test_bench_sanity_runs_both_checks(trained_classifier, monkeypatch, tmp_path):
    pytest.importorskip("captum")
    monkeypatch.setenv("EAC_CACHE", str(tmp_path))  # the permuted-label model is cached there
    monkeypatch.setattr(sanity, "trained_scene_model", lambda opts: _scene_model(trained_classifier))
    monkeypatch.setattr(sanity, "QUICK", replace(QUICK, train_n=TEST_TRAIN_N, train_epochs=TEST_EPOCHS))
    monkeypatch.setattr(sanity, "GRADIENT_PEERS", ("captum Saliency",))

    def few_methods(quick, batch=None):
        from eac.engine.sanity import registered_method

        return {name: registered_method(name) for name in ("loo", "cam")}  # eac's check: tests/engine

    monkeypatch.setattr(sanity, "engine_methods", few_methods)
    report = sanity.run_sanity(BenchOptions(workload="sanity", quick=True, command="eac bench sanity --quick"))
    summary = report.extra["summary"]
    methods = summary["methods"]
    assert list(methods) == ["loo", "cam", "captum Saliency"]
    layers = report.settings["layers"]
    for m in methods.values():
        assert len(m["cascading"]) == len(m["independent"]) == len(layers)
        assert m["model_randomisation"] in ("pass", "fail", "inconclusive")
        assert m["data_randomisation"] in ("pass", "fail", "inconclusive")
    assert methods["loo"]["rerun"] == methods["cam"]["rerun"] == 1.0  # deterministic methods
    assert 0 < summary["critical_similarity"] < 1
    assert "permuted labels" in report.settings["data_randomisation"]
    per_scene = report.extra["per_scene"][0]
    assert [s["kind"] for s in per_scene["steps"]].count("data") == 1
    text = report.render()
    assert "model randomisation" in text and "captum Saliency" in text
