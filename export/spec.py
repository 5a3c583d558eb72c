"""Declarative specs of every model eac exports: names, dynamic axes, opset, tolerances.

One :class:`ExportSpec` per exported graph. Exporters, validators, manifests and
the runtime all read names from here, so a rename happens in one place.

Opset 17: the first opset with a native ``LayerNormalization`` operator (SAM's
ViT blocks and ``LayerNorm2d`` are LayerNorm-heavy; a fused op is faster in
ONNX Runtime and keeps fp16 exports numerically sane), supported by every
onnxruntime ≥ 1.14 and by TensorRT ≥ 8.6.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_OPSET = 17
#: Lowest opset the exporters accept with ``--opset`` (LayerNormalization needs 17).
MIN_OPSET = 17


@dataclass(frozen=True)
class ExportSpec:
    """What one exported ONNX graph looks like.

    Attributes
    ----------
    name : str
        Model role (``"sam_encoder"``...).
    filename : str
        File written in the output folder.
    inputs, outputs : tuple of str
        Graph input and output names, in order.
    optional_outputs : tuple of str
        Outputs a graph has only when the model allows them (after ``outputs``, in order).
    dynamic_axes : dict
        ``{tensor name: {axis: symbolic name}}`` as ``torch.onnx.export`` takes it.
    shapes : dict
        Documented shapes, symbolic dimensions as strings (recorded in manifests).
    tolerance : dict of str to float
        Largest absolute difference to PyTorch fp32 allowed per output (fp32 export).
    tolerance_fp16 : dict of str to float
        The same for ``--fp16`` exports.
    opset : int
        Default opset.
    """

    name: str
    filename: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    optional_outputs: tuple[str, ...] = ()
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    shapes: dict[str, list] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)
    tolerance_fp16: dict[str, float] = field(default_factory=dict)
    opset: int = DEFAULT_OPSET

    def tolerances(self, fp16: bool = False) -> dict[str, float]:
        """Largest absolute difference to PyTorch fp32 allowed per output."""
        return dict(self.tolerance_fp16 if fp16 else self.tolerance)

    def output_names(self, *optional: str) -> tuple[str, ...]:
        """``outputs`` followed by the named optional outputs, in spec order."""
        unknown = set(optional) - set(self.optional_outputs)
        if unknown:
            raise ValueError(f"{self.name}: {sorted(unknown)} are not optional outputs {self.optional_outputs}")
        return self.outputs + tuple(n for n in self.optional_outputs if n in optional)

    def axes_for(self, names: tuple[str, ...]) -> dict[str, dict[int, str]]:
        """``dynamic_axes`` restricted to the graph's inputs and the given outputs."""
        keep = set(self.inputs) | set(names)
        return {k: dict(v) for k, v in self.dynamic_axes.items() if k in keep}


SAM_ENCODER = ExportSpec(
    name="sam_encoder",
    filename="encoder.onnx",
    inputs=("image",),
    outputs=("image_embeddings",),
    dynamic_axes={},
    # image: resized so the longest side is 1024, normalised with pixel mean/std
    # *outside* the graph, zero-padded bottom/right to 1024×1024.
    shapes={"image": [1, 3, 1024, 1024], "image_embeddings": [1, 256, 64, 64]},
    tolerance={"image_embeddings": 1e-3},
    tolerance_fp16={"image_embeddings": 5e-2},
)

SAM_DECODER = ExportSpec(
    name="sam_decoder",
    filename="decoder.onnx",
    inputs=("image_embeddings", "point_coords", "point_labels"),
    outputs=("low_res_masks", "iou_predictions"),
    dynamic_axes={
        "point_coords": {0: "batch", 1: "points"},
        "point_labels": {0: "batch", 1: "points"},
        "low_res_masks": {0: "batch"},
        "iou_predictions": {0: "batch"},
    },
    # point_coords in the 1024 input frame (x, y), labels 1 = foreground, 0 = background,
    # -1 = padding. Outputs: 3 multimask logits per prompt and their predicted IoUs.
    shapes={
        "image_embeddings": [1, 256, 64, 64],
        "point_coords": ["batch", "points", 2],
        "point_labels": ["batch", "points"],
        "low_res_masks": ["batch", 3, 256, 256],
        "iou_predictions": ["batch", 3],
    },
    tolerance={"low_res_masks": 1e-2, "iou_predictions": 1e-3},
    tolerance_fp16={"low_res_masks": 0.25, "iou_predictions": 2e-2},
)

#: ``decoder.onnx`` of a folder with a precomputed image context (the default since the factored decoder):
#: the prompt-independent part of the decoder runs once per image in ``decoder_context.onnx``.
SAM_DECODER_CONTEXT = ExportSpec(
    name="sam_decoder_context",
    filename="decoder_context.onnx",
    inputs=("image_embeddings",),
    outputs=("image_context",),
    # image_context: 1×N×W, N = 64·64 image tokens; W = 256 (tokens + no-mask embedding) + 128 + 128
    # (first layer's token→image keys and values) + 128 (its image→token queries).
    shapes={"image_embeddings": [1, 256, 64, 64], "image_context": [1, 4096, 640]},
    tolerance={"image_context": 1e-3},
    tolerance_fp16={"image_context": 5e-2},
)

SAM_PROMPT_DECODER = ExportSpec(
    name="sam_prompt_decoder",
    filename="decoder.onnx",
    inputs=("image_context", "point_coords", "point_labels"),
    outputs=SAM_DECODER.outputs,
    dynamic_axes=dict(SAM_DECODER.dynamic_axes),
    shapes={**{k: v for k, v in SAM_DECODER.shapes.items() if k != "image_embeddings"},
            "image_context": [1, 4096, 640]},
    tolerance=dict(SAM_DECODER.tolerance),
    tolerance_fp16=dict(SAM_DECODER.tolerance_fp16),
)

CLASSIFIER = ExportSpec(
    name="classifier",
    filename="classifier.onnx",
    inputs=("input",),
    outputs=("logits", "features"),
    # feature_map: the input of the global average pooling before the final linear layer
    # (B×C×h×w, C = features), for CAM / SeCAM; absent for networks without one (ViT).
    optional_outputs=("feature_map",),
    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"},
                  "feature_map": {0: "batch"}},
    shapes={"input": ["batch", 3, "height", "width"], "logits": ["batch", "classes"],
            "features": ["batch", "features"], "feature_map": ["batch", "features", "map_height", "map_width"]},
    tolerance={"logits": 1e-3, "features": 1e-3, "feature_map": 1e-3},
    tolerance_fp16={"logits": 5e-2, "features": 5e-2, "feature_map": 5e-2},
)

#: Name of the file holding the classifier's final linear layer (weight K×D, bias K).
HEAD_FILENAME = "head.npz"
