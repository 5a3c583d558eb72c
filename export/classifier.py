"""Export a PyTorch image classifier to an eac classifier folder.

The folder (see :mod:`eac.engine.classifier` for the reader) holds

* ``classifier.onnx`` — input ``input`` (B×3×H×W float32, normalised), outputs
  ``logits`` (B×K) and ``features`` (B×D, the input of the final linear layer),
  batch axis dynamic;
* ``head.npz`` — that final layer: ``weight`` K×D and ``bias`` K (float32), so
  that ``features @ weight.T + bias == logits``;
* ``manifest.json`` — preprocessing, labels, validation result, provenance.

The final linear layer is found automatically: the last ``nn.Linear`` in module
order whose output width equals the number of classes and whose output *is*
the model's output (ResNet ``fc``, VGG/EfficientNet ``classifier.N``, ViT
``heads.head``...). ``feature_layer`` names it explicitly. Its input is
captured with a forward hook inside a wrapper module, which the TorchScript
ONNX exporter traces like any other tensor.

Validation runs the ONNX graph with ONNX Runtime on a batch of another size
than the one traced and compares both outputs with PyTorch fp32, using the
tolerances of :data:`eac.export.spec.CLASSIFIER`.
"""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.manifest import file_entry, write_manifest
from ._torch_utils import StagedFolder, first_line, fp32_norm_class, import_factory, load_state_dict, read_labels
from .errors import ExportError, ValidationError
from .spec import CLASSIFIER, HEAD_FILENAME
from .validate import check_io_names, compare_outputs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 224
DEFAULT_RESIZE = 256
#: Preprocessing options at their defaults: replaced by a torchvision weights' own preprocessing.
_DEFAULT_PREPROCESS = {"crop": DEFAULT_INPUT_SIZE, "resize": DEFAULT_RESIZE, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
CHANNEL_ORDERS = ("RGB", "BGR")
#: Pixels are divided by this before mean/std normalisation.
PIXEL_SCALE = 1.0 / 255.0
#: Layers kept in float32 by ``fp16`` exports (torch.nn class names).
FP32_NORMS_NAMES = ("LayerNorm", "GroupNorm")
#: Batch size used for tracing; validation uses another one (dynamic axis check).
TRACE_BATCH = 2
VALIDATION_BATCH = 3
#: Seed of the random tracing/validation inputs (a local generator; nothing global).
INPUT_SEED = 0
#: Opsets the classifier exporter accepts (TorchScript exporter range; 11 is the first
#: with shape-friendly Flatten/Gather semantics every common classifier needs).
MIN_OPSET = 11
MAX_OPSET = 20
#: Relative agreement required between the head's output and the model's output
#: when checking that the chosen linear layer really is the final layer.
_HEAD_CHECK_RTOL = 1e-4
_HEAD_CHECK_ATOL = 1e-5


def export_classifier(
    out: str | os.PathLike,
    torchvision: str | None = None,
    weights: str | None = None,
    module: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    feature_layer: str | None = None,
    input_size: int = DEFAULT_INPUT_SIZE,
    resize: int | None = DEFAULT_RESIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channel_order: str = "RGB",
    labels: str | os.PathLike | None = None,
    opset: int | None = None,
    fp16: bool = False,
    validate: bool = True,
) -> dict[str, Any]:
    """Export a classifier to ``out`` (a new or empty folder).

    Parameters
    ----------
    out : path-like
        Output folder; written atomically (temporary sibling renamed at the end).
    torchvision : str, optional
        A torchvision model name (``resnet50``...); needs torchvision installed.
    weights : str, optional
        With ``torchvision``: ``"default"`` (the model's default weights, downloaded
        by torchvision) or a state-dict path. Without it the weights are random.
        With ``"default"``, preprocessing options left at their defaults are
        replaced by the weights' own (e.g. resize 232 for ResNet-50 V2); the
        manifest's ``source`` says so.
    module : str, optional
        ``pkg.mod:factory``; ``factory()`` returns a ``torch.nn.Module``.
    checkpoint : path-like, optional
        With ``module``: a state dict loaded strictly into the factory's model.
    feature_layer : str, optional
        Module name of the final ``nn.Linear`` (found automatically when None).
    input_size : int
        Side of the square network input (the centre crop).
    resize : int or None
        Shorter side the image is resized to before the crop (None: no resize).
    mean, std : 3 floats
        Per-channel normalisation in R, G, B order, 0-1 scale.
    channel_order : {"RGB", "BGR"}
        Channel order the network expects.
    labels : path-like, optional
        Text file with one class name per line (must have K lines).
    opset : int, optional
        ONNX opset (default :data:`eac.export.spec.CLASSIFIER`'s, 17).
    fp16 : bool
        Store weights and compute in float16 (input and outputs stay float32),
        LayerNorm/GroupNorm kept in float32; validated against PyTorch fp32 with
        the fp16 tolerances.
    validate : bool
        Compare the ONNX graph with PyTorch (strongly recommended).

    Returns
    -------
    dict
        The manifest written to ``out/manifest.json``.

    Raises
    ------
    ExportError
        Bad arguments, missing torchvision, no usable final linear layer,
        unwritable output, export failure.
    CheckpointError
        Missing, corrupt or mismatching checkpoint.
    ValidationError
        ONNX Runtime disagrees with PyTorch beyond tolerance.
    """
    _require_torch()
    opset = CLASSIFIER.opset if opset is None else int(opset)
    mean_t, std_t = _check_preprocess(input_size, resize, mean, std, channel_order, opset)
    label_list = read_labels(labels)
    if (torchvision is None) == (module is None):
        raise ExportError("give exactly one of --torchvision NAME or --module PKG.MOD:FACTORY")
    if weights is not None and torchvision is None:
        raise ExportError("--weights goes with --torchvision; use --checkpoint with --module")
    if checkpoint is not None and module is None:
        raise ExportError("--checkpoint goes with --module; use --weights with --torchvision")

    out = Path(out)
    staged = StagedFolder(out)
    with staged as tmp:
        import torch

        if torchvision is not None:
            model, source, tv_labels, recommended = _build_torchvision(torchvision, weights)
            if label_list is None:
                label_list = tv_labels
            input_size, resize, mean_t, std_t = _adopt_preprocess(
                recommended, {"crop": input_size, "resize": resize, "mean": mean_t, "std": std_t}, source
            )
        else:
            model, source = _build_module(module, checkpoint)
        model = model.float().eval()
        gen = torch.Generator().manual_seed(INPUT_SEED)
        trace_x = torch.randn(TRACE_BATCH, 3, input_size, input_size, generator=gen)
        val_x = torch.randn(VALIDATION_BATCH, 3, input_size, input_size, generator=gen)

        head_name, head = find_head(model, trace_x, feature_layer)
        model16 = half_keeping_norms(copy.deepcopy(model)) if fp16 else None  # copied before any hook is attached
        wrapper_fp32 = FeatureCapture(model, head)
        with torch.no_grad():
            ref_logits, ref_features = wrapper_fp32(val_x)
        num_classes = int(ref_logits.shape[1])
        feature_dim = int(ref_features.shape[1])
        if label_list is not None and len(label_list) != num_classes:
            raise ExportError(f"{labels}: {len(label_list)} labels but the model has {num_classes} classes")

        export_model = FeatureCapture(model16, None, head_name) if fp16 else wrapper_fp32
        onnx_path = tmp / CLASSIFIER.filename
        _torch_export(export_model, trace_x, onnx_path, opset)

        session = _ort_session(onnx_path)
        check_io_names(session, CLASSIFIER.inputs, CLASSIFIER.outputs, model="classifier")
        weight = head.weight.detach().float().cpu().numpy().astype(np.float32)
        bias = (
            head.bias.detach().float().cpu().numpy().astype(np.float32)
            if head.bias is not None
            else np.zeros(num_classes, np.float32)
        )
        validation: dict[str, Any]
        if validate:
            got = session.run(list(CLASSIFIER.outputs), {CLASSIFIER.inputs[0]: val_x.numpy()})
            diffs = compare_outputs(
                {"logits": ref_logits.numpy(), "features": ref_features.numpy()},
                dict(zip(CLASSIFIER.outputs, got)),
                CLASSIFIER.tolerances(fp16),
                model="classifier",
            )
            validation = {
                "reference": "pytorch fp32",
                "batch": VALIDATION_BATCH,
                "traced_batch": TRACE_BATCH,
                "max_abs_diff": diffs,
                "tolerance": CLASSIFIER.tolerances(fp16),
                # how well head.npz reproduces the ONNX logits from the ONNX features
                "head_max_abs_diff": _head_residual(got[1], got[0], weight, bias),
                "passed": True,
            }
        else:
            validation = {"skipped": True}

        np.savez(tmp / HEAD_FILENAME, weight=weight, bias=bias)

        source.update({"feature_layer": head_name, "torch_version": torch.__version__})
        manifest = {
            "kind": "classifier",
            "opset": opset,
            "precision": "fp16" if fp16 else "fp32",
            "fp32_layers": sorted(FP32_NORMS_NAMES) if fp16 else [],
            "files": {"model": file_entry(tmp, CLASSIFIER.filename), "head": file_entry(tmp, HEAD_FILENAME)},
            "input": {
                "name": CLASSIFIER.inputs[0],
                "height": int(input_size),
                "width": int(input_size),
                "batch": None,
                "layout": "NCHW",
                "dtype": "float32",
            },
            "outputs": {"logits": "logits", "features": "features"},
            "output_kind": "logits",
            "num_classes": num_classes,
            "feature_dim": feature_dim,
            "labels": label_list,
            "preprocess": {
                "resize": None if resize is None else int(resize),
                "crop": int(input_size),
                "mean": [float(v) for v in mean_t],
                "std": [float(v) for v in std_t],
                "stats_order": "RGB",
                "channel_order": channel_order,
                "scale": PIXEL_SCALE,
            },
            "validation": validation,
            "source": source,
        }
        write_manifest(tmp, manifest)
        staged.commit()
    return _reread(out)


def half_keeping_norms(model):
    """Convert ``model`` to float16 in place, keeping LayerNorm/GroupNorm layers in float32.

    Normalisation statistics (a mean and a variance over many channels) lose
    too much precision, or overflow, in float16; the layers around them do not.
    BatchNorm in eval mode is an affine map folded into the neighbouring
    convolution by the exporter, so it stays float16.
    """
    import torch

    norm_types = tuple(getattr(torch.nn, name) for name in FP32_NORMS_NAMES)
    wrapper = fp32_norm_class()
    model.half()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, norm_types):
                setattr(parent, name, wrapper(child))
    return model


def _head_residual(features: np.ndarray, logits: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> float:
    """max |features @ weight.T + bias - logits| (B×D, B×K, K×D, K) in float64."""
    predicted = features.astype(np.float64) @ weight.T.astype(np.float64) + bias
    return float(np.max(np.abs(predicted - logits)))


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"exporting needs PyTorch ({first_line(exc)}); install the export extra: "
            "pip install torch==2.13.0 -e '.[export]' (see README)"
        ) from exc


def _reread(out: Path) -> dict[str, Any]:
    from ..engine.manifest import read_manifest

    return read_manifest(out, "classifier")


def _check_preprocess(input_size, resize, mean, std, channel_order, opset) -> tuple[tuple, tuple]:
    if not isinstance(input_size, (int, np.integer)) or input_size <= 0:
        raise ExportError(f"--input-size must be a positive integer, got {input_size!r}")
    if resize is not None and (not isinstance(resize, (int, np.integer)) or resize < input_size):
        raise ExportError(f"--resize must be an integer ≥ --input-size ({input_size}), got {resize!r}")
    if channel_order not in CHANNEL_ORDERS:
        raise ExportError(f"--channel-order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    mean_t = tuple(float(v) for v in mean)
    std_t = tuple(float(v) for v in std)
    if len(mean_t) != 3 or len(std_t) != 3:
        raise ExportError("--mean and --std take three numbers each (R G B, 0-1 scale)")
    if not all(np.isfinite(mean_t)) or not all(np.isfinite(s) and s > 0 for s in std_t):
        raise ExportError(f"--std must be positive and --mean finite, got mean {mean_t}, std {std_t}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset}: the classifier exporter supports opsets {MIN_OPSET}..{MAX_OPSET}")
    return mean_t, std_t


def _build_module(spec: str, checkpoint) -> tuple[Any, dict[str, Any]]:
    import torch

    factory = import_factory(spec)
    try:
        model = factory()
    except Exception as exc:
        raise ExportError(f"--module {spec!r}: the factory raised {type(exc).__name__}: {first_line(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"--module {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    source: dict[str, Any] = {"module": spec, "checkpoint": None}
    if checkpoint is not None:
        source["checkpoint"] = load_state_dict(model, checkpoint)
    else:
        source["weights_note"] = "factory weights (no --checkpoint)"
    return model, source


def _build_torchvision(
    name: str, weights: str | None
) -> tuple[Any, dict[str, Any], list[str] | None, dict[str, Any] | None]:
    """torchvision model ``name``; returns (model, provenance, class names, the weights' preprocessing)."""
    try:
        import torchvision
        from torchvision.models import get_model, get_model_weights
    except ImportError as exc:
        raise ExportError(
            f"--torchvision {name}: torchvision is not installed ({first_line(exc)}); install the torchvision "
            "build matching your torch, or export with --module PKG.MOD:FACTORY"
        ) from exc
    source: dict[str, Any] = {"torchvision": name, "torchvision_version": torchvision.__version__, "weights": weights}
    labels = None
    recommended = None
    try:
        if weights == "default":
            enum = get_model_weights(name).DEFAULT
            model = get_model(name, weights=enum)
            source["weights"] = str(enum)
            labels = list(enum.meta.get("categories") or []) or None
            recommended = _weights_preprocess(enum)
        else:
            model = get_model(name, weights=None)
    except ValueError as exc:  # unknown model name
        raise ExportError(f"--torchvision {name}: {first_line(exc)}") from exc
    except (OSError, RuntimeError) as exc:  # download failures, hash mismatches
        raise ExportError(
            f"--torchvision {name} --weights default: cannot get the default weights ({first_line(exc)}); "
            "download them elsewhere and pass the file with --weights PATH"
        ) from exc
    if weights not in (None, "default"):
        source["weights"] = load_state_dict(model, weights, what="weights file")
    elif weights is None:
        source["weights_note"] = "random weights (no --weights given)"
    return model, source, labels, recommended


def _adopt_preprocess(recommended: dict[str, Any] | None, given: dict[str, Any], source: dict[str, Any]) -> tuple:
    """Preprocessing to use: a torchvision weights' own when every option was left at its default.

    Returns ``(crop, resize, mean, std)``; notes the decision in ``source``.
    """
    chosen = given
    if recommended is not None and recommended != given:
        if given == _DEFAULT_PREPROCESS:
            chosen = recommended
            source["preprocess"] = "from the weights' transforms (the preprocessing options were defaults)"
        else:
            source["preprocess_note"] = f"the weights' transforms recommend {recommended}; the given options were used"
    return chosen["crop"], chosen["resize"], chosen["mean"], chosen["std"]


def _weights_preprocess(enum) -> dict[str, Any] | None:
    """Crop, resize, mean and std of a torchvision weights enum's ``transforms()`` (None if unknown)."""
    try:
        t = enum.transforms()
        crop = t.crop_size
        resize = t.resize_size
        crop = int(crop[0] if isinstance(crop, (list, tuple)) else crop)
        resize = int(resize[0] if isinstance(resize, (list, tuple)) else resize)
        mean = tuple(float(v) for v in t.mean)
        std = tuple(float(v) for v in t.std)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    return {"crop": crop, "resize": resize, "mean": mean, "std": std}


class _Recorder:
    """Forward hook recording a module's (first) input and output."""

    def __init__(self) -> None:
        self.inputs: list = []
        self.outputs: list = []

    def __call__(self, module, args, output) -> None:
        self.inputs.append(args[0] if args else None)
        self.outputs.append(output)


def find_head(model, example, feature_layer: str | None = None):
    """Find the final linear layer of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (eval mode).
    example : torch.Tensor, B×3×H×W
        An input to run the model on.
    feature_layer : str, optional
        The layer's module name; otherwise the last ``nn.Linear`` (module order)
        with K outputs whose output equals the model's output.

    Returns
    -------
    (str, torch.nn.Linear)
        The layer's name and the layer.

    Raises
    ------
    ExportError
        The model's output is not B×K, no such layer exists, the named layer is
        not a Linear, or its output is not the model's output.
    """
    import torch

    modules = dict(model.named_modules())
    linears = [(n, m) for n, m in modules.items() if isinstance(m, torch.nn.Linear)]
    if feature_layer is not None:
        if feature_layer not in modules:
            names = ", ".join(n for n, _ in linears[-5:]) or "none"
            raise ExportError(f"--feature-layer {feature_layer!r}: no such module (last Linear layers: {names})")
        if not isinstance(modules[feature_layer], torch.nn.Linear):
            raise ExportError(
                f"--feature-layer {feature_layer!r} is a {type(modules[feature_layer]).__name__}, not a torch.nn.Linear"
            )
        candidates = [(feature_layer, modules[feature_layer])]
    else:
        candidates = linears
    recorders = []
    handles = []
    for name, layer in candidates:
        rec = _Recorder()
        recorders.append(rec)
        handles.append(layer.register_forward_hook(rec))
    try:
        with torch.no_grad():
            output = model(example)
    except Exception as exc:
        raise ExportError(
            f"the model fails on a {tuple(example.shape)} input ({type(exc).__name__}: {first_line(exc)}); "
            "check --input-size"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != example.shape[0]:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ExportError(f"the model must return B×K logits; on a batch of {example.shape[0]} it returned {shape}")
    k = int(output.shape[1])
    rejected = []
    for (name, layer), rec in reversed(list(zip(candidates, recorders))):
        if layer.out_features != k and feature_layer is None:
            continue
        if len(rec.outputs) != 1:
            rejected.append(f"{name} (called {len(rec.outputs)} times)")
            continue
        out = rec.outputs[0]
        feats = rec.inputs[0]
        if feats is None or feats.ndim != 2 or tuple(out.shape) != tuple(output.shape):
            rejected.append(f"{name} (input {tuple(feats.shape) if feats is not None else None})")
            continue
        if not torch.allclose(out, output, rtol=_HEAD_CHECK_RTOL, atol=_HEAD_CHECK_ATOL):
            rejected.append(f"{name} (its output is not the model's output)")
            continue
        return name, layer
    why = "; ".join(rejected) if rejected else f"no nn.Linear with {k} outputs"
    raise ExportError(
        f"cannot find the final linear layer whose output is the model's B×{k} logits ({why}); the model must end "
        "in an nn.Linear (no softmax after it); name it with --feature-layer"
    )


def _feature_capture_class():
    import torch

    class FeatureCaptureImpl(torch.nn.Module):
        """Runs the model and also returns the input of its head (the features).

        For fp16 exports the input is cast to float16 before the model and the
        outputs back to float32, so the graph's I/O stays float32.
        """

        def __init__(self, model, head=None, head_name: str | None = None):
            super().__init__()
            self.model = model
            self.head = head if head is not None else dict(model.named_modules())[head_name]
            self._captured: list = []
            self.head.register_forward_hook(self._hook)

        def _hook(self, module, args, output) -> None:
            self._captured.append(args[0])

        def forward(self, x):
            self._captured.clear()
            # the head's dtype is the model's compute dtype (fp16 exports keep only norms in fp32)
            logits = self.model(x.to(self.head.weight.dtype))
            features = self._captured[-1]
            self._captured.clear()
            return logits.float(), features.float()

    return FeatureCaptureImpl


def FeatureCapture(model, head=None, head_name: str | None = None):
    """Wrap ``model`` so that it returns ``(logits, features)`` (see :func:`find_head`)."""
    return _feature_capture_class()(model, head, head_name)


def _torch_export(wrapper, example, path: Path, opset: int) -> None:
    import torch

    kwargs = {
        "input_names": list(CLASSIFIER.inputs),
        "output_names": list(CLASSIFIER.outputs),
        "dynamic_axes": CLASSIFIER.dynamic_axes,
        "opset_version": opset,
        "do_constant_folding": True,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: fast, and handles every opset from 11 to 20. Not under
            # no_grad: with grad disabled, nn.MultiheadAttention / TransformerEncoderLayer take
            # their fused "fast path" (aten::_native_multi_head_attention), which has no ONNX
            # symbolic; with grad enabled they run the plain ops, which export.
            if "dynamo" in inspect.signature(torch.onnx.export).parameters:
                kwargs["dynamo"] = False  # torch ≥ 2.5 defaults to the torch.export-based exporter
            with torch.enable_grad():
                torch.onnx.export(wrapper, (example,), str(path), **kwargs)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}: {first_line(exc)})") from exc


def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the exported graph ({first_line(exc)})") from exc


__all__ = ["FeatureCapture", "ValidationError", "export_classifier", "find_head"]
