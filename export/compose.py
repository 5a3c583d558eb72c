"""The masked-batch composition as a tiny ONNX graph, for running it on the device.

On a GPU the expensive part of a masked evaluation is moving B×3×h×w floats over
the bus, not the arithmetic. This graph composes the masked batch where the
classifier runs, so only the B×N coalition matrix crosses the bus:

    keep  = min(coalitions @ concept_masks, 1)          B×P   (union of the chosen masks)
    keep  = |invert − keep|                              (invert = 1: keep the outside)
    input = baseline + reshape(keep, B×1×h×w) · (image − baseline)

Inputs: ``coalitions`` B×N float32 (0/1), ``concept_masks`` N×P float32 (0/1,
P = h·w), ``image`` and ``baseline`` 1×3×h×w float32 (already normalised),
``invert`` a 1-element float32. Output: ``input`` B×3×h×w float32. Every size
is dynamic, so one file serves every classifier; it ships inside the package
(``engine/data/compose.onnx``) and :mod:`eac.engine.device_compose` runs it. It
is the graph form of :func:`eac.kernels.compose.compose_batch`.

Regenerate the shipped file with ``python -m eac.export.compose``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from ..engine.manifest import COMPOSE

#: Opset of the composition graph (:data:`eac.engine.manifest.COMPOSE`'s): every op used
#: exists unchanged since opset 13 (Reshape/Slice with tensor inputs); 13 keeps it loadable
#: by old runtimes.
COMPOSE_OPSET = COMPOSE.opset
COMPOSE_IR_VERSION = 7


def build_compose_model() -> onnx.ModelProto:
    """Build the composition graph (see the module docstring)."""
    f32 = TensorProto.FLOAT
    c = COMPOSE
    inputs = [
        helper.make_tensor_value_info(c.coalitions, f32, ["batch", "concepts"]),
        helper.make_tensor_value_info(c.concept_masks, f32, ["concepts", "pixels"]),
        helper.make_tensor_value_info(c.image, f32, [1, 3, "height", "width"]),
        helper.make_tensor_value_info(c.baseline, f32, [1, 3, "height", "width"]),
        helper.make_tensor_value_info(c.invert, f32, [1]),
    ]
    output = helper.make_tensor_value_info(c.output, f32, ["batch", 3, "height", "width"])
    consts = [
        helper.make_tensor("one", f32, [], [1.0]),
        helper.make_tensor("lead", TensorProto.INT64, [2], [-1, 1]),
        helper.make_tensor("hw_start", TensorProto.INT64, [1], [2]),
        helper.make_tensor("hw_end", TensorProto.INT64, [1], [4]),
    ]
    nodes = [
        helper.make_node("MatMul", [c.coalitions, c.concept_masks], ["covered"]),
        helper.make_node("Min", ["covered", "one"], ["union"]),
        helper.make_node("Sub", [c.invert, "union"], ["signed"]),
        helper.make_node("Abs", ["signed"], ["keep_flat"]),
        helper.make_node("Shape", [c.image], ["image_shape"]),
        helper.make_node("Slice", ["image_shape", "hw_start", "hw_end"], ["hw"]),
        helper.make_node("Concat", ["lead", "hw"], ["keep_shape"], axis=0),
        helper.make_node("Reshape", ["keep_flat", "keep_shape"], ["keep"]),
        helper.make_node("Sub", [c.image, c.baseline], ["delta"]),
        helper.make_node("Mul", ["keep", "delta"], ["kept"]),
        helper.make_node("Add", [c.baseline, "kept"], [c.output]),
    ]
    graph = helper.make_graph(nodes, "eac_compose", inputs, [output], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", COMPOSE_OPSET)],
                              producer_name="eac.export.compose")
    model.ir_version = COMPOSE_IR_VERSION
    onnx.checker.check_model(model)
    return model


def shipped_path() -> Path:
    """Where the package keeps the composition graph."""
    return Path(__file__).resolve().parent.parent / "engine" / "data" / COMPOSE.filename


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the masked-batch composition graph.")
    parser.add_argument("--out", default=str(shipped_path()),
                        help="where to write it (default: the package's copy)")
    args = parser.parse_args(argv)
    onnx.save(build_compose_model(), args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
