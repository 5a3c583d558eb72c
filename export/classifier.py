"""Export a PyTorch image classifier to an eac classifier folder.

The folder (see :mod:`eac.engine.classifier` for the reader) holds

* ``classifier.onnx`` — input ``input`` (B×3×H×W float32, normalised), outputs
  ``logits`` (B×K), ``features`` (B×D, the input of the final linear layer) and,
  when the network ends in global average pooling → (flatten) → linear,
  ``feature_map`` (B×D×h×w, the map that pooling averages: what CAM and SeCAM
  need); batch axis dynamic;
* ``head.npz`` — that final layer: ``weight`` K×D and ``bias`` K (float32), so
  that ``features @ weight.T + bias == logits``;
* ``manifest.json`` — preprocessing, labels, validation result, provenance
  (``outputs.feature_map`` is absent or null when there is no feature map).

The model's output is its logits, or an object carrying them as ``logits``
(Hugging Face transformers' ``ImageClassifierOutput...``; see
:func:`model_logits`). Where models come from (torchvision, a factory,
transformers, timm) and the preprocessing their own configurations ask for:
:mod:`eac.export.classifier_sources`.

The final linear layer is found automatically: the last ``nn.Linear`` in module
order whose output width equals the number of classes and whose output *is*
the model's logits (ResNet ``fc``, VGG/EfficientNet ``classifier.N``, ViT
``heads.head``, transformers' ``classifier``...). ``feature_layer`` names it explicitly. The feature map is
found by :func:`find_feature_map` (``feature_map_layer`` names its module).
Both are captured with forward hooks inside a wrapper module, which the
TorchScript ONNX exporter traces like any other tensor.

Validation runs the ONNX graph with ONNX Runtime on a batch of another size
than the one traced and compares every output with PyTorch fp32, using the
tolerances of :data:`eac.export.spec.CLASSIFIER`. A model whose outputs hold
NaN or Inf on a random input is refused before anything is exported.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.classifier import MIN_CLASSES, single_output
from ..engine.manifest import (
    CHANNEL_ORDERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PIXEL_SCALE,
    ClassifierInput,
    ClassifierManifest,
    Preprocess,
    file_entry,
    read_manifest,
)
from ._torch_utils import FP32_NORM_NAMES, half_with_fp32_norms, onnx_export, require_torch
from .classifier_sources import BuiltModel, build_model, check_model_source, source_flag
from .common import StagedFolder, check_finite, check_labels, cpu_session, first_line, read_labels, shape_text
from .errors import ExportError, ValidationError
from .spec import CLASSIFIER, HEAD_FILENAME
from .validate import check_io_names, compare_outputs

DEFAULT_INPUT_SIZE = 224
DEFAULT_RESIZE = 256
#: Preprocessing options at their defaults: replaced by a torchvision weights' own preprocessing.
_DEFAULT_PREPROCESS = {"crop": DEFAULT_INPUT_SIZE, "resize": DEFAULT_RESIZE, "mean": IMAGENET_MEAN,
                       "std": IMAGENET_STD}
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
#: Agreement required between a feature map averaged over h, w and the features.
_POOL_CHECK_RTOL = 1e-4
_POOL_CHECK_ATOL = 1e-5
_MAP_RANK = 4
_FEATURE_MAP = CLASSIFIER.optional_outputs[0]


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
    feature_map_layer: str | None = None,
    hf: str | None = None,
    timm: str | None = None,
) -> dict[str, Any]:
    """Export a classifier to ``out`` (a new or empty folder).

    Parameters
    ----------
    out : path-like
        Output folder; written atomically (temporary sibling renamed at the end).
    torchvision : str, optional
        A torchvision model name (``resnet50``...); needs torchvision installed.
    weights : str, optional
        With ``torchvision`` or ``timm``: ``"default"`` (the model's default / pretrained
        weights, downloaded by that library) or a state-dict path. Without it the weights
        are random.
    module : str, optional
        ``pkg.mod:factory``; ``factory()`` returns a ``torch.nn.Module`` (its output may be
        the logits or an object carrying ``logits``, as transformers' models return).
    checkpoint : path-like, optional
        With ``module``: a state dict loaded strictly into the factory's model.
    hf : str, optional
        A Hugging Face transformers image classifier: a local folder (``save_pretrained``)
        or a hub id (needs the ``hf`` extra; offline, the error says what to fetch).
    timm : str, optional
        A timm model name (``timm.create_model``; timm needs torchvision).
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
    feature_map_layer : str, optional
        Module whose output is the B×D×h×w feature map (or a global pooling
        module, whose input is); found automatically when None (see
        :func:`find_feature_map`). Naming one on a network without a feature
        map (a ViT) raises.

    Preprocessing options left at their defaults are replaced by the model's own
    where its source has them (torchvision ``--weights default``: the weights'
    transforms; ``hf``: ``preprocessor_config.json`` or ``config.image_size``;
    ``timm``: its data configuration); the manifest's ``source`` says so
    (:mod:`eac.export.classifier_sources`).

    Returns
    -------
    dict
        The manifest written to ``out/manifest.json``.

    Raises
    ------
    ExportError
        PyTorch missing, bad arguments, missing torchvision, no usable final
        linear layer, a named feature map layer that is none, NaN/Inf outputs,
        a labels file of another length than K, unwritable output, export failure.
    CheckpointError
        Missing, corrupt or mismatching checkpoint.
    ValidationError
        ONNX Runtime disagrees with PyTorch beyond tolerance.
    """
    require_torch("eac export classifier")
    opset = CLASSIFIER.opset if opset is None else int(opset)
    preprocess = _check_preprocess(input_size, resize, mean, std, channel_order, opset)
    label_list = read_labels(labels)
    check_model_source(torchvision, weights, module, checkpoint, hf, timm)

    staged = StagedFolder(out)
    with staged as tmp:
        model, source, label_list, preprocess = _build_model(
            build_model(torchvision, weights, module, checkpoint, hf, timm), label_list, preprocess)
        what = source_flag(torchvision, module, hf, timm)
        trace_x, val_x = _example_inputs(preprocess.crop[0])
        head_name, head = find_head(model, trace_x, feature_layer, model_name=what)
        fmap = find_feature_map(model, trace_x, head, feature_map_layer, head_name)
        reference = _reference_outputs(model, head, fmap, val_x, what)
        num_classes = int(reference["logits"].shape[1])
        if num_classes < MIN_CLASSES:
            raise ExportError(f"{what}: {single_output(num_classes)}")
        check_labels(label_list, num_classes, labels)
        outputs = CLASSIFIER.output_names(*([_FEATURE_MAP] if fmap is not None else []))
        export_model = _capture(half_with_fp32_norms(model) if fp16 else model, head_name, fmap)
        onnx_path = tmp / CLASSIFIER.filename
        _torch_export(export_model, trace_x, onnx_path, opset, outputs)
        weight, bias = _head_arrays(head, num_classes)
        validation = (_validate(onnx_path, outputs, val_x, reference, weight, bias, fp16) if validate
                      else {"skipped": True})
        np.savez(tmp / HEAD_FILENAME, weight=weight, bias=bias)
        source.update({"feature_layer": head_name, "torch_version": _torch_version()})
        source.update(_describe_feature_map(fmap))
        _manifest(tmp, preprocess, reference, fmap, label_list, opset, fp16, validation, source).write(tmp)
        staged.commit()
    return read_manifest(staged.out, ClassifierManifest.kind)


# --------------------------------------------------------------------------- the stages
def _build_model(built: BuiltModel, label_list, preprocess: Preprocess):
    """Stage 2: the model (fp32, eval), its provenance, labels (the source's when none were given) and
    preprocessing (the source's own when the options were left at their defaults)."""
    source = built.source
    label_list = label_list if label_list is not None else built.labels
    given = {"crop": preprocess.crop[0], "resize": preprocess.resize, "mean": preprocess.mean, "std": preprocess.std}
    crop, resize, mean, std = _adopt_preprocess(built.recommended, built.recommended_from, given, source)
    if built.notes:
        source["preprocess_notes"] = list(built.notes)
    preprocess = Preprocess(crop=(crop, crop), resize=resize, mean=tuple(mean), std=tuple(std),
                            channel_order=preprocess.channel_order, scale=PIXEL_SCALE)
    return built.model, source, label_list, preprocess


def _example_inputs(side: int):
    """Stage 3: the random tracing batch and the (differently sized) validation batch."""
    import torch

    gen = torch.Generator().manual_seed(INPUT_SEED)
    trace_x = torch.randn(TRACE_BATCH, 3, side, side, generator=gen)
    val_x = torch.randn(VALIDATION_BATCH, 3, side, side, generator=gen)
    return trace_x, val_x


def _reference_outputs(model, head, fmap: FeatureMapSource | None, x, what: str) -> dict[str, np.ndarray]:
    """Stage 6: PyTorch fp32 outputs on the validation batch; NaN/Inf refused."""
    import torch

    with torch.no_grad():
        got = _capture(model, None, fmap, head=head)(x)
    reference = {name: t.numpy() for name, t in zip(CLASSIFIER.output_names(_FEATURE_MAP), got, strict=False)}
    check_finite(reference, what, f"a random {shape_text(x.shape)} input")
    return reference


def _head_arrays(head, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The final layer as float32 arrays: weight K×D, bias K (zeros when it has none)."""
    weight = head.weight.detach().float().cpu().numpy().astype(np.float32)
    if head.bias is None:
        return weight, np.zeros(num_classes, np.float32)
    return weight, head.bias.detach().float().cpu().numpy().astype(np.float32)


def _validate(onnx_path: Path, outputs: tuple[str, ...], x, reference: dict[str, np.ndarray],
              weight: np.ndarray, bias: np.ndarray, fp16: bool) -> dict[str, Any]:
    """Stage 8: ONNX Runtime against PyTorch fp32 on the validation batch; raises ValidationError."""
    session = cpu_session(onnx_path)
    check_io_names(session, CLASSIFIER.inputs, outputs, model="classifier")
    got = dict(zip(outputs, session.run(list(outputs), {CLASSIFIER.inputs[0]: x.numpy()}), strict=True))
    tolerances = {name: tol for name, tol in CLASSIFIER.tolerances(fp16).items() if name in outputs}
    diffs = compare_outputs({name: reference[name] for name in outputs}, got, tolerances, model="classifier")
    validation = {
        "reference": "pytorch fp32",
        "batch": VALIDATION_BATCH,
        "traced_batch": TRACE_BATCH,
        "max_abs_diff": diffs,
        "tolerance": tolerances,
        # how well head.npz reproduces the ONNX logits from the ONNX features
        "head_max_abs_diff": _head_residual(got["features"], got["logits"], weight, bias),
        "passed": True,
    }
    if _FEATURE_MAP in got:
        pooled = got[_FEATURE_MAP].astype(np.float64).mean(axis=(2, 3))
        validation["feature_map_pool_max_abs_diff"] = float(np.max(np.abs(pooled - got["features"])))
    return validation


def _manifest(folder: Path, preprocess: Preprocess, reference: dict[str, np.ndarray],
              fmap: FeatureMapSource | None, labels: list[str] | None, opset: int, fp16: bool,
              validation: dict[str, Any], source: dict[str, Any]) -> ClassifierManifest:
    """Stage 9: the manifest of the written folder."""
    height, width = preprocess.crop
    return ClassifierManifest(
        files={"model": file_entry(folder, CLASSIFIER.filename), "head": file_entry(folder, HEAD_FILENAME)},
        input=ClassifierInput(name=CLASSIFIER.inputs[0], height=height, width=width),
        logits_output="logits",
        num_classes=int(reference["logits"].shape[1]),
        preprocess=preprocess,
        output_kind="logits",
        features_output="features",
        feature_dim=int(reference["features"].shape[1]),
        feature_map_output=_FEATURE_MAP if fmap is not None else None,
        labels=labels,
        opset=opset,
        precision="fp16" if fp16 else "fp32",
        validation=validation,
        source=source,
        extra={"fp32_layers": sorted(FP32_NORM_NAMES) if fp16 else []},
    )


def _head_residual(features: np.ndarray, logits: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> float:
    """max |features @ weight.T + bias - logits| (B×D, B×K, K×D, K) in float64."""
    predicted = features.astype(np.float64) @ weight.T.astype(np.float64) + bias
    return float(np.max(np.abs(predicted - logits)))


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _check_preprocess(input_size, resize, mean, std, channel_order, opset) -> Preprocess:
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
    return Preprocess(crop=(int(input_size), int(input_size)), resize=None if resize is None else int(resize),
                      mean=mean_t, std=std_t, channel_order=channel_order, scale=PIXEL_SCALE)  # type: ignore[arg-type]


def _adopt_preprocess(recommended: dict[str, Any] | None, origin: str, given: dict[str, Any],
                      source: dict[str, Any]) -> tuple:
    """Preprocessing to use: the model's own (``recommended``, from ``origin``) when every option was left
    at its default, else the given options. Returns ``(crop, resize, mean, std)``; notes the decision in
    ``source``."""
    chosen = given
    if recommended:
        merged = {**given, **recommended}
        if merged != given:
            if given == _DEFAULT_PREPROCESS:
                chosen = merged
                source["preprocess"] = f"from {origin} (the preprocessing options were defaults)"
            else:
                source["preprocess_note"] = f"{origin} recommends {recommended}; the given options were used"
    return chosen["crop"], chosen["resize"], chosen["mean"], chosen["std"]


def model_logits(output):
    """The logits in a model's output: the output itself, or its ``logits`` (transformers'
    ``ImageClassifierOutput...``, or a mapping with that key); anything else is returned as it is."""
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    return output if logits is None else logits


class _Recorder:
    """Forward hook recording a module's (first) input and output."""

    def __init__(self) -> None:
        self.inputs: list = []
        self.outputs: list = []

    def __call__(self, module, args, output) -> None:
        self.inputs.append(args[0] if args else None)
        self.outputs.append(output)


def find_head(model, example, feature_layer: str | None = None, model_name: str = "the model"):
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
    model_name : str
        How messages name the model (``--module pkg.mod:f``...).

    Returns
    -------
    (str, torch.nn.Linear)
        The layer's name and the layer.

    Raises
    ------
    ExportError
        The model's output is not B×K or holds NaN/Inf, no such layer exists, the
        named layer is not a Linear, or its output is not the model's output.
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
    for _, layer in candidates:
        rec = _Recorder()
        recorders.append(rec)
        handles.append(layer.register_forward_hook(rec))
    try:
        with torch.no_grad():
            output = model_logits(model(example))
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
        raise ExportError(f"the model must return B×K logits (a tensor, or an output with .logits); on a batch of "
                          f"{example.shape[0]} it returned {shape}")
    check_finite({"logits": output.numpy()}, model_name, f"a random {shape_text(example.shape)} input")
    k = int(output.shape[1])
    rejected = []
    for (name, layer), rec in reversed(list(zip(candidates, recorders, strict=True))):
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


@dataclass(frozen=True)
class FeatureMapSource:
    """Where the feature map is taken: ``tensor`` ("output" or "input") of module ``module``
    at its ``call``-th call in a forward pass.

    ``exact``: the map averaged over h, w *is* the final linear layer's input (so
    ``W · map`` is exactly the class activation map); otherwise the map is
    global-average-pooled and then goes through other layers (a ConvNeXt's
    LayerNorm) before the linear layer.
    """

    module: str
    tensor: str
    call: int
    exact: bool


def _is_global_pool(module, x, out) -> bool:
    """An average pooling module whose 4-D input becomes a B×C×1×1 output."""
    import torch

    pools = (torch.nn.AdaptiveAvgPool2d, torch.nn.AvgPool2d)
    return (isinstance(module, pools) and isinstance(x, torch.Tensor) and x.ndim == _MAP_RANK
            and isinstance(out, torch.Tensor) and out.ndim == _MAP_RANK and tuple(out.shape[2:]) == (1, 1))


def find_feature_map(model, example, head, feature_map_layer: str | None = None,
                     head_name: str = "the final linear layer") -> FeatureMapSource | None:
    """Find the feature map the final linear layer's features are the global average of.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (eval mode).
    example : torch.Tensor, B×3×H×W
        An input to run the model on.
    head : torch.nn.Linear
        The final linear layer (see :func:`find_head`), with D inputs.
    feature_map_layer : str, optional
        Module name: its output is the map, or, for a global pooling module,
        its input. Otherwise found automatically: the last module run before
        the head whose B×D×h×w output averages (over h, w) to the head's input
        (ResNet ``layer4``, EfficientNet / MobileNet ``features``); failing that,
        the input of the last global average pooling module with D channels
        (ConvNeXt: pooling, then LayerNorm, then the head).
    head_name : str
        Name of the head in messages.

    Returns
    -------
    FeatureMapSource or None
        None when the network has no such map (a ViT).

    Raises
    ------
    ExportError
        ``feature_map_layer`` is not a module, does not run before the head,
        is not a B×D×h×w map, or the head does not take its global average.
    """
    import torch

    modules = dict(model.named_modules())
    if feature_map_layer is not None and feature_map_layer not in modules:
        raise ExportError(f"--feature-map-layer {feature_map_layer!r}: no such module")
    dim = int(head.in_features)
    records: list[tuple[str, int, Any, Any, bool]] = []  # name, call, input, output, global pool
    calls: dict[str, int] = {}
    features: list = []

    def keep(t) -> bool:
        return isinstance(t, torch.Tensor) and t.ndim == _MAP_RANK and t.shape[1] == dim

    def hook(name):
        def record(module, args, out) -> None:
            if features:  # after the head: not a map the head reads
                return
            if module is head:
                features.append(args[0])
                return
            call = calls[name] = calls.get(name, -1) + 1
            x = args[0] if args else None
            pool = _is_global_pool(module, x, out)
            if name == feature_map_layer or keep(out) or (pool and keep(x)):
                records.append((name, call, x, out, pool))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items() if n]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    if not features:
        return None
    feats = features[0].double()

    def averages_to_features(t) -> bool:
        return (keep(t) and t.shape[0] == feats.shape[0]
                and torch.allclose(t.double().mean(dim=(2, 3)), feats, rtol=_POOL_CHECK_RTOL,
                                   atol=_POOL_CHECK_ATOL))

    pooled_inputs = [x for _, _, x, _, pool in records if pool]
    if feature_map_layer is not None:
        return _named_feature_map(feature_map_layer, records, dim, head_name, averages_to_features,
                                  pooled_inputs)
    exact = [(n, c, out) for n, c, _, out, _ in records if averages_to_features(out)]
    if exact:
        spatial = [r for r in exact if r[2].shape[2] * r[2].shape[3] > 1]
        name, call, _ = (spatial or exact)[-1]
        return FeatureMapSource(name, "output", call, exact=True)
    pooled = [(n, c) for n, c, x, _, pool in records if pool and keep(x)]
    if pooled:
        name, call = pooled[-1]
        return FeatureMapSource(name, "input", call, exact=False)
    return None


def _named_feature_map(name: str, records, dim: int, head_name: str, averages_to_features,
                       pooled_inputs) -> FeatureMapSource:
    """The feature map at module ``name`` (``--feature-map-layer``), or a one-line ExportError."""
    import torch

    mine = [r for r in records if r[0] == name]
    if not mine:
        raise ExportError(f"--feature-map-layer {name!r} does not run before the final linear layer "
                          f"{head_name!r}")
    _, call, x, out, pool = mine[-1]
    tensor, value = ("input", x) if pool else ("output", out)
    if not isinstance(value, torch.Tensor) or value.ndim != _MAP_RANK:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ExportError(f"--feature-map-layer {name!r} gives {shape}, not a B×C×h×w feature map")
    if value.shape[1] != dim:
        raise ExportError(f"--feature-map-layer {name!r} has {value.shape[1]} channels but the final linear "
                          f"layer {head_name!r} takes {dim} features: its average is not the features")
    if averages_to_features(value):
        return FeatureMapSource(name, tensor, call, exact=True)
    if any(p is value or (p.shape == value.shape and torch.equal(p, value)) for p in pooled_inputs):
        return FeatureMapSource(name, tensor, call, exact=False)
    raise ExportError(
        f"--feature-map-layer {name!r}: the final linear layer {head_name!r} does not take the global "
        "average pooling of its map; this network has no feature map (CAM/SeCAM need global average "
        "pooling → linear, as in ResNet or EfficientNet; a ViT has none): leave --feature-map-layer out"
    )


def _describe_feature_map(fmap: FeatureMapSource | None) -> dict[str, Any]:
    """The manifest ``source`` entries that say where the feature map comes from, or that there is none."""
    if fmap is None:
        return {"feature_map_layer": None,
                "feature_map": "none: the network does not end in global average pooling → linear"}
    relation = ("its average over h, w is the features" if fmap.exact
                else "it is global-average-pooled, then other layers run before the final linear layer")
    return {"feature_map_layer": fmap.module,
            "feature_map": f"{fmap.tensor} of {fmap.module!r}: {relation}"}


def _capture_class():
    import torch

    class Capture(torch.nn.Module):
        """Runs the model and also returns its features (the head's input) and feature map.

        Hooks are attached for the forward pass only. For fp16 exports the input
        is cast to float16 before the model and the outputs back to float32, so
        the graph's I/O stays float32.
        """

        def __init__(self, model, head, fmap: FeatureMapSource | None):
            super().__init__()
            self.model = model
            self.head = head
            self.fmap = fmap
            self.fmap_module = dict(model.named_modules())[fmap.module] if fmap is not None else None

        def forward(self, x):
            captured: dict[str, Any] = {}
            calls = [0]

            def on_head(module, args, out) -> None:
                captured["features"] = args[0]

            def on_map(module, args, out) -> None:
                if calls[0] == self.fmap.call:
                    captured["map"] = args[0] if self.fmap.tensor == "input" else out
                calls[0] += 1

            handles = [self.head.register_forward_hook(on_head)]
            if self.fmap_module is not None:
                handles.append(self.fmap_module.register_forward_hook(on_map))
            try:
                # the head's dtype is the model's compute dtype (fp16 exports keep only norms in fp32)
                logits = model_logits(self.model(x.to(self.head.weight.dtype)))
            finally:
                for handle in handles:
                    handle.remove()
            outputs = (logits.float(), captured["features"].float())
            if self.fmap_module is not None:
                outputs += (captured["map"].float(),)
            return outputs

    return Capture


def _capture(model, head_name: str | None, fmap: FeatureMapSource | None, head=None):
    """``model`` wrapped to return ``(logits, features[, feature_map])``; the head by name or given."""
    if head is None:
        head = dict(model.named_modules())[head_name]
    return _capture_class()(model, head, fmap)


def _torch_export(wrapper, example, path: Path, opset: int, outputs: tuple[str, ...]) -> None:
    """Stage 7: trace ``wrapper`` to ``path`` with the TorchScript exporter."""
    import torch

    try:
        with warnings.catch_warnings():
            # the tracer's remarks on users' models (Python numbers from shapes...): the graph is validated instead
            warnings.simplefilter("ignore")
            # The TorchScript exporter (onnx_export says why): it handles every opset from 11 to 20. Not under
            # no_grad: with grad disabled, nn.MultiheadAttention / TransformerEncoderLayer take
            # their fused "fast path" (aten::_native_multi_head_attention), which has no ONNX
            # symbolic; with grad enabled they run the plain ops, which export.
            with torch.enable_grad():
                onnx_export(wrapper, (example,), path, input_names=list(CLASSIFIER.inputs),
                            output_names=list(outputs), dynamic_axes=CLASSIFIER.axes_for(outputs),
                            opset_version=opset, do_constant_folding=True)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}: {first_line(exc)})") from exc


__all__ = ["FeatureMapSource", "ValidationError", "export_classifier", "find_feature_map", "find_head", "model_logits"]
