"""`eac import-onnx` command line: --logits / --probabilities and what it prints."""

from __future__ import annotations

import json

import numpy as np
import onnx
from eac.engine.cli import main
from onnx import TensorProto, helper


def _softmax_classifier(path, hw=8, k=3):
    """A fixed-batch-1 NCHW graph: global average pool → linear → Softmax (outputs probabilities)."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("data_0:0", TensorProto.FLOAT, [1, 3, hw, hw])
    y = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, k])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, k], rng.normal(size=(3, k)).astype(np.float32).ravel())
    nodes = [helper.make_node("GlobalAveragePool", ["data_0:0"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["z"]),
             helper.make_node("Softmax", ["z"], ["prob"], axis=1)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=[w]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


def test_import_detects_probabilities_and_reports_it(tmp_path, capsys):
    src = _softmax_classifier(tmp_path / "m.onnx")
    assert main(["import-onnx", str(src), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "outputs are probabilities" in out and "output kind reason" in out
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["output_kind"] == "probabilities"


def test_import_logits_flag_overrides_detection(tmp_path, capsys):
    src = _softmax_classifier(tmp_path / "m.onnx")
    assert main(["import-onnx", str(src), "--out", str(tmp_path / "b"), "--logits"]) == 0
    assert "outputs are logits" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["output_kind"] == "logits"
    # The two flags exclude each other.
    try:
        main(["import-onnx", str(src), "--out", str(tmp_path / "c"), "--logits", "--probabilities"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("argparse accepted --logits with --probabilities")
