"""Adopt an ONNX image classifier "as found in the wild" as an eac classifier folder.

Such files often have a batch axis fixed at 1, softmax already applied, odd
tensor names (``data_0:0``), weights listed as graph inputs, old opsets (9 and
up) and sometimes a ``N×K×1×1`` output. :func:`import_onnx` takes them as they are:

* initializers listed among the graph inputs are removed from the inputs, so the
  image is the only input left;
* the single image input must be 4-D float with 3 channels, NCHW (``N×3×H×W``)
  or NHWC (``N×H×W×3``); anything else is refused naming what was found;
* the logits output must be ``B×K`` (``B×K×1×1`` is flattened by an added node);
* the final linear layer is found (a ``Gemm``, or ``MatMul`` [+ ``Add``], whose
  output reaches the logits output directly or through ``Softmax`` / ``Flatten`` /
  ``Reshape`` / ``Identity``): its input becomes the ``features`` output (B×D),
  its weights ``head.npz`` (weight K×D, bias K; written only when they reproduce
  the layer's output on a probe batch), and the map a ``GlobalAveragePool`` (or
  ``ReduceMean`` over H, W, or a whole-map ``AveragePool``) averages into those
  features becomes the ``feature_map`` output (B×C×h×w);
* a fixed batch axis is made symbolic when the graph allows it, which is checked
  by running a larger batch against per-image runs; when it does not (a
  ``Reshape`` with a hard-coded batch, say), the batch stays fixed and the
  manifest records it, so the runtime loops;
* softmax outputs are detected (a ``Softmax`` node produces the output, or the
  outputs on random inputs are probabilities) or forced with ``probabilities=True``
  (``False`` forces logits); the manifest records which, and why;
* a model whose outputs hold NaN or Inf on a random input is refused;
* float16 image inputs are kept (the runtime casts), a too-new IR version is
  lowered to what this onnxruntime reads, and outputs that are not used
  (class indices, a features output not named) are listed in the manifest.

Nothing is silently assumed: defaults taken for preprocessing and every graph
rewrite are listed under ``source`` in the manifest. Needs onnx and onnxruntime,
not torch.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.manifest import (
    CHANNEL_ORDERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PIXEL_SCALE,
    ClassifierInput,
    ClassifierManifest,
    Preprocess,
    file_entry,
    file_sha256,
    read_manifest,
)
from .common import (
    StagedFolder,
    check_finite,
    check_labels,
    cpu_session,
    file_entries,
    first_line,
    read_labels,
    save_onnx,
    shape_text,
)
from .errors import ExportError
from .spec import CLASSIFIER, HEAD_FILENAME

#: Default resize of the shorter side relative to the crop: ImageNet's 256 for 224.
RESIZE_RATIO = 256.0 / 224.0
MODEL_FILENAME = CLASSIFIER.filename
#: Batch size used to check that a rewritten symbolic batch axis really works.
BATCH_CHECK_SIZE = 2
#: Agreement required between a batched run and per-image runs.
BATCH_CHECK_RTOL = 1e-4
BATCH_CHECK_ATOL = 1e-5
#: Random inputs used to detect probability outputs, and the slack allowed.
PROBE_SAMPLES = 4
PROB_RANGE_SLACK = 1e-6
PROB_SUM_ATOL = 1e-3
PROBE_SEED = 0
#: Agreement required between head.npz (features @ weight.T + bias) and the linear layer's
#: output, relative to the largest logit; float16 weights compute with float16 rounding.
HEAD_RTOL = {"float32": 1e-4, "float16": 1e-2}
HEAD_ATOL = 1e-5
#: Agreement required between the feature map averaged over h, w and the features.
POOL_RTOL = 1e-4
POOL_ATOL = 1e-5
#: Ops that pass a tensor through unchanged in value (walked back to find a Softmax).
_PASSTHROUGH_OPS = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Dropout")
#: Ops allowed between the final linear layer and the logits output (``Cast`` only to float32 or float64,
#: which keeps the values: eac's own exporter ends its graphs with such casts).
_HEAD_TAIL_OPS = ("Softmax", "Flatten", "Reshape", "Identity", "Squeeze", "Dropout", "Cast")
#: Ops allowed between the global pooling and the final linear layer's input (``Cast`` as above).
_POOL_TAIL_OPS = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Cast")
#: ONNX element types a ``Cast`` on the head's or the pooling's path may convert to (FLOAT, DOUBLE).
_WIDE_FLOAT_TYPES = (1, 11)
#: Spatial axes of a global ReduceMean on a 4-D map, by the map's layout.
_REDUCE_AXES = {frozenset({2, 3}): "NCHW", frozenset({1, 2}): "NHWC"}
_MAP_RANK = 4
_NHWC_TO_NCHW = (0, 3, 1, 2)
_ONNX_FLOAT, _ONNX_FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16
_FLOAT_TYPES = {_ONNX_FLOAT: "float32", _ONNX_FLOAT16: "float16"}
BATCH_DIM_NAME = "batch"
#: ONNX Runtime's message for files with a too-new IR version.
_IR_TOO_NEW = re.compile(r"max supported IR version: (\d+)")
#: IR 4 is the first in which initializers need not be graph inputs.
_MIN_IR_WITHOUT_INIT_INPUTS = 4
#: Sub-folder of the staging folder where candidate graphs are tried.
_CHECK_DIR = ".check"


# --------------------------------------------------------------------------- the stages
def import_onnx(
    model: str | os.PathLike,
    out: str | os.PathLike,
    features_output: str | None = None,
    probabilities: bool | None = None,
    input_size: int | None = None,
    resize: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channel_order: str = "RGB",
    labels: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Turn an ONNX classifier into an eac classifier folder at ``out``.

    Parameters
    ----------
    model : path-like
        The ``.onnx`` file.
    out : path-like
        Output folder (new or empty; written atomically).
    features_output : str, optional
        Name of a ``B×D`` (or ``B×D×1×1``) features tensor: a graph output or an
        intermediate tensor (added as a graph output). Default: the input of the
        final linear layer, when one is found.
    probabilities : bool or None
        True: the model outputs probabilities; False: it outputs logits; None: detect it.
    input_size : int, optional
        Crop side; required when the graph's input size is not static, and must
        agree with it when it is.
    resize : int, optional
        Shorter side before the crop (default ``round(max(H, W) * 256 / 224)``).
    mean, std : 3 floats, optional
        R, G, B normalisation on the 0-1 scale (default ImageNet's).
    channel_order : {"RGB", "BGR"}
    labels : path-like, optional
        Text file with one class name per line (must have K lines).

    Returns
    -------
    dict
        The manifest written to ``out/manifest.json``.

    Raises
    ------
    ExportError
        Unreadable file, not a classifier (no single 4-D image input or no B×K
        output: the message lists the inputs and outputs found), NaN/Inf outputs,
        a labels file of another length than K, inconsistent options, unwritable output.
    """
    src = Path(model)
    if channel_order not in CHANNEL_ORDERS:
        raise ExportError(f"--channel-order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    label_list = read_labels(labels)
    job = _Adoption(src=src, proto=_load(src))
    _drop_initializer_inputs(job)
    image = _image_input(job, input_size)
    preprocess = _preprocess(job, image, resize, mean, std, channel_order)

    staged = StagedFolder(out)
    with staged as tmp:
        job.path = tmp / MODEL_FILENAME
        job.check_dir = tmp / _CHECK_DIR
        job.check_dir.mkdir()
        _open_fitting_ir(job)
        probe = image.batch_of(image.probe_batch, job.rng)  # the random batch every check runs on
        results = _run_outputs(job, image, probe)
        logits_src, num_classes = _pick_logits(job, results, features_output, image.probe_batch)
        check_labels(label_list, num_classes, labels)
        head, head_reason = _find_linear_head(job.proto, logits_src)
        exposed = _expose_features(job, image, probe, results, logits_src, features_output, head)
        check_finite({logits_src: results[logits_src], **exposed.values}, str(src),
                     f"a random {shape_text(probe.shape)} input")
        head_check = _check_head(head, exposed, head_reason)
        logits = _flatten_if_4d(job, logits_src, results[logits_src])
        features = _flatten_if_4d(job, exposed.features, exposed.values.get(exposed.features))
        kind, kind_reason = _output_kind(job, image, logits, probabilities)
        output_names = [n for n in (logits, features, exposed.feature_map) if n is not None]
        batch, batch_check = _batch_axis(job, image, output_names)
        shutil.rmtree(job.check_dir)
        files = file_entries(tmp, "model", save_onnx(job.proto, job.path))
        if head_check.passed:
            np.savez(tmp / HEAD_FILENAME, weight=head.weight, bias=head.bias)
            files["head"] = file_entry(tmp, HEAD_FILENAME)
        validation: dict[str, Any] = {"batch_check": batch_check}
        if head_check.max_abs_diff is not None:
            validation["head_max_abs_diff"] = head_check.max_abs_diff
        if exposed.pool_diff is not None:
            validation["feature_map_pool_max_abs_diff"] = exposed.pool_diff
        manifest = ClassifierManifest(
            files=files,
            input=ClassifierInput(name=image.name, height=image.height, width=image.width, batch=batch,
                                  layout=image.layout, dtype=image.dtype),
            logits_output=logits,
            num_classes=num_classes,
            preprocess=preprocess,
            output_kind=kind,
            features_output=features,
            feature_dim=exposed.feature_dim,
            feature_map_output=exposed.feature_map,
            labels=label_list,
            opset=_opset(job.proto),
            precision="fp16" if image.dtype == "float16" else "fp32",
            validation=validation,
            source={
                "onnx": str(src.resolve()),
                "sha256": file_sha256(src),
                "producer": f"{job.proto.producer_name} {job.proto.producer_version}".strip(),
                "output_kind_reason": kind_reason,
                # outputs not used, with their shapes on a batch of the probe size: a features
                # output among them can be named with --features-output
                "other_outputs": {n: _describe_value(v) for n, v in results.items()
                                  if n not in (logits_src, exposed.features)},
                "rewrites": job.rewrites,
                "assumed": job.assumed,
                "head": head_check.describe(head),
                "feature_map": exposed.feature_map_note,
            },
        )
        manifest.write(tmp)
        staged.commit()
    return read_manifest(staged.out, ClassifierManifest.kind)


@dataclass
class _Adoption:
    """What the stages of :func:`import_onnx` share: the graph being adopted and its notes."""

    src: Path
    proto: Any
    path: Path = Path(MODEL_FILENAME)
    check_dir: Path = Path(_CHECK_DIR)
    session: Any = None
    rewrites: list[str] = field(default_factory=list)
    assumed: list[str] = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(PROBE_SEED))

    def save_and_open(self, quiet: bool = False) -> None:
        """Write the current graph to ``path`` and open it."""
        save_onnx(self.proto, self.path)
        self.session = _session(self.path, quiet=quiet)


@dataclass(frozen=True)
class _ImageInput:
    """The graph's image input as found (and the static size it is given)."""

    name: str
    layout: str
    dtype: str
    height: int
    width: int
    fixed_batch: int | None

    @property
    def probe_batch(self) -> int:
        return self.fixed_batch or 1

    def batch_of(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Random n×3×H×W (or n×H×W×3) input in the graph's dtype."""
        shape = _nchw_to_layout((n, 3, self.height, self.width), self.layout)
        return rng.standard_normal(shape).astype(_np_dtype(self.dtype))


def _load(src: Path):
    """Stage 1: read the file."""
    import onnx

    if src.is_dir():
        raise ExportError(f"{src}: is a folder; give the .onnx file to adopt (a folder eac wrote is used as it is)")
    if not src.is_file():
        raise ExportError(f"{src}: no such ONNX file")
    try:
        return onnx.load(str(src))
    except Exception as exc:
        raise ExportError(f"{src}: not a readable ONNX model ({first_line(exc)})") from exc


def _image_input(job: _Adoption, input_size: int | None) -> _ImageInput:
    """Stage 2: the single 4-D float image input; fixes a symbolic H×W to ``input_size``."""
    graph = job.proto.graph
    inputs = list(graph.input)
    found = f"inputs: {_describe(inputs)}; outputs: {_describe(graph.output)}"
    src = job.src
    if len(inputs) != 1:
        raise ExportError(f"{src}: not an image classifier: needs exactly one image input ({found})")
    inp = inputs[0]
    dims = _dims(inp)
    elem = inp.type.tensor_type.elem_type
    if len(dims) != _MAP_RANK:
        raise ExportError(f"{src}: not an image classifier: the input must be N×3×H×W or N×H×W×3 ({found})")
    if elem not in _FLOAT_TYPES:
        raise ExportError(f"{src}: the image input must be float32 or float16, not ONNX type {elem} ({found})")
    if dims[1] == 3:
        layout = "NCHW"
    elif dims[3] == 3:
        layout = "NHWC"
    else:
        raise ExportError(
            f"{src}: not an image classifier: the input has no 3-channel axis (N×3×H×W or N×H×W×3) ({found})"
        )
    height, width = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    height, width = _input_hw(height, width, input_size, src)
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        _set_static_hw(job.proto, layout, height, width)
        job.rewrites.append(f"input {inp.name!r}: spatial size fixed to {height}×{width}")
    fixed_batch = dims[0] if isinstance(dims[0], int) and dims[0] >= 1 else None
    return _ImageInput(inp.name, layout, _FLOAT_TYPES[elem], height, width, fixed_batch)


def _preprocess(job: _Adoption, image: _ImageInput, resize: int | None, mean, std,
                channel_order: str) -> Preprocess:
    """Stage 3: the preprocessing, defaults noted in ``job.assumed``."""
    longest = max(image.height, image.width)
    if resize is None:
        resize = round(longest * RESIZE_RATIO)  # the crop fits either orientation
        job.assumed.append(f"resize {resize} (round(crop × 256/224))")
    elif resize < longest:
        raise ExportError(f"--resize {resize} is smaller than the input size {image.height}×{image.width}")
    if mean is None:
        mean = IMAGENET_MEAN
        job.assumed.append("ImageNet mean")
    if std is None:
        std = IMAGENET_STD
        job.assumed.append("ImageNet std")
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or not np.all(np.isfinite(mean)):
        raise ExportError("--mean and --std take three numbers each (R G B, 0-1 scale), std positive")
    return Preprocess(crop=(image.height, image.width), resize=int(resize), mean=mean, std=std,  # type: ignore[arg-type]
                      channel_order=channel_order, scale=PIXEL_SCALE)


def _run_outputs(job: _Adoption, image: _ImageInput, x: np.ndarray) -> dict[str, np.ndarray | None]:
    """Every graph output on ``x`` (None for outputs that are not tensors)."""
    names = [o.name for o in job.session.get_outputs()]
    return {n: _as_array(v) for n, v in zip(names, _run(job.session, image.name, x), strict=True)}


def _pick_logits(job: _Adoption, results: dict[str, np.ndarray | None], features_output: str | None,
                 batch: int) -> tuple[str, int]:
    """Stage 4: the logits output: the first float B×K (or B×K×1×1) graph output, K ≥ 2."""
    candidates = [n for n in results if n != features_output and (_width(results[n], batch) or 0) >= 2]
    if not candidates:
        found = (f"inputs: {[(i.name, i.shape) for i in job.session.get_inputs()]}; outputs on a batch of "
                 f"{batch}: {[(n, _describe_value(v)) for n, v in results.items()]}")
        raise ExportError(f"{job.src}: not a classifier: no B×K output (K ≥ 2) ({found})")
    logits = candidates[0]
    return logits, int(_width(results[logits], batch))


# --------------------------------------------------------------------------- the final linear layer
@dataclass(frozen=True)
class _LinearHead:
    """The final linear layer found in the graph: logits-side tensor ``output`` = features · Wᵀ + b."""

    features: str
    output: str
    weight: np.ndarray  # K×D float32
    bias: np.ndarray  # K float32
    op: str
    node: str
    after: tuple[str, ...]
    dtype: str


def _find_linear_head(proto, logits: str) -> tuple[_LinearHead | None, str]:
    """Stage 5: the ``Gemm`` / ``MatMul`` [+ ``Add``] whose output reaches ``logits``.

    Returns
    -------
    (_LinearHead or None, str)
        The layer, or None and why none was taken.
    """
    producers = _producers(proto)
    tensor, after = _walk_back(producers, logits, _HEAD_TAIL_OPS)
    node = producers.get(tensor)
    if node is None:
        return None, f"the logits output {logits!r} is not computed by a node"
    if node.op_type == "Gemm":
        return _gemm_head(proto, node, after)
    if node.op_type == "Add":
        for i, other in ((0, 1), (1, 0)):
            matmul = producers.get(node.input[i])
            bias = _constant(proto, producers, node.input[other])
            if matmul is not None and matmul.op_type == "MatMul" and bias is not None:
                return _matmul_head(proto, producers, matmul, node, bias, after)
        return None, f"the logits come from an Add ({node.name or tensor!r}) that is not MatMul + constant"
    if node.op_type == "MatMul":
        return _matmul_head(proto, producers, node, None, None, after)
    return None, (f"the logits come from a {node.op_type} node, not a Gemm or MatMul [+ Add] "
                  f"(through {'/'.join(_HEAD_TAIL_OPS)})")


def _gemm_head(proto, node, after: tuple[str, ...]) -> tuple[_LinearHead | None, str]:
    attrs = _attributes(node)
    producers = _producers(proto)
    weight = _constant(proto, producers, node.input[1])
    if weight is None or weight.ndim != 2:
        return None, f"the Gemm {node.name!r} has no constant 2-D weight"
    if attrs.get("transA", 0):
        return None, f"the Gemm {node.name!r} transposes its input (transA=1)"
    dtype = _weight_dtype(weight)
    weight = weight.astype(np.float64) * float(attrs.get("alpha", 1.0))
    if not attrs.get("transB", 0):
        weight = weight.T  # D×K → K×D
    k = weight.shape[0]
    bias = np.zeros(k)
    if len(node.input) > 2 and node.input[2]:
        c = _constant(proto, producers, node.input[2])
        if c is None or c.size not in (1, k):
            return None, f"the Gemm {node.name!r} has no constant bias of {k} values"
        bias = np.broadcast_to(c.astype(np.float64).reshape(-1), (k,)) * float(attrs.get("beta", 1.0))
    return _LinearHead(node.input[0], node.output[0], weight.astype(np.float32), bias.astype(np.float32),
                       "Gemm", node.name, after, dtype), ""


def _matmul_head(proto, producers, matmul, add, bias, after) -> tuple[_LinearHead | None, str]:
    weight = _constant(proto, producers, matmul.input[1])
    if weight is None or weight.ndim != 2:
        return None, f"the MatMul {matmul.name!r} has no constant 2-D weight"
    dtype = _weight_dtype(weight)
    weight = weight.astype(np.float64).T  # D×K → K×D
    k = weight.shape[0]
    if bias is None:
        bias = np.zeros(k)
    elif bias.size not in (1, k):
        return None, f"the Add after MatMul {matmul.name!r} adds {bias.size} values, not {k}"
    bias = np.broadcast_to(np.asarray(bias, np.float64).reshape(-1), (k,))
    output = add.output[0] if add is not None else matmul.output[0]
    op = "MatMul+Add" if add is not None else "MatMul"
    return _LinearHead(matmul.input[0], output, weight.astype(np.float32), bias.astype(np.float32), op,
                       matmul.name, after, dtype), ""


def _find_global_pool(proto, features: str) -> tuple[str, str, str] | None:
    """The map a global average pooling turns into ``features``: (map tensor, layout, op) or None."""
    producers = _producers(proto)
    tensor, _ = _walk_back(producers, features, _POOL_TAIL_OPS)
    node = producers.get(tensor)
    if node is None:
        return None
    if node.op_type in ("GlobalAveragePool", "AveragePool"):  # AveragePool: checked numerically
        return node.input[0], "NCHW", node.op_type
    if node.op_type == "ReduceMean":
        axes = _attributes(node).get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = _constant(proto, producers, node.input[1])
            axes = None if value is None else value.reshape(-1).tolist()
        if axes is None:
            return None
        layout = _REDUCE_AXES.get(frozenset(int(a) % _MAP_RANK for a in axes))
        if layout is not None:
            return node.input[0], layout, "ReduceMean"
    return None


# --------------------------------------------------------------------------- exposing outputs
@dataclass
class _Exposed:
    """The features and feature-map outputs, with their values on the probe batch."""

    features: str | None = None
    feature_dim: int | None = None
    feature_map: str | None = None
    feature_map_note: str | None = None
    pool_diff: float | None = None
    head_output: np.ndarray | None = None
    values: dict[str, np.ndarray] = field(default_factory=dict)


def _expose_features(job: _Adoption, image: _ImageInput, probe: np.ndarray,
                     results: dict[str, np.ndarray | None], logits: str, features_output: str | None,
                     head: _LinearHead | None) -> _Exposed:
    """Stage 6: make the features (and feature map) graph outputs, checked on the probe batch.

    ``features_output`` (a graph output or an intermediate tensor) wins over the
    linear layer's input. The feature map is exposed only when the features are
    the linear layer's input and equal the map's mean over h, w.
    """
    exposed = _Exposed()
    graph_outputs = [o.name for o in job.proto.graph.output]
    produced = {n for node in job.proto.graph.node for n in node.output}
    features = features_output
    if features is None and head is not None:
        features = head.features
    if features_output is not None and features_output not in graph_outputs and features_output not in produced:
        raise ExportError(
            f"{job.src}: --features-output {features_output!r} is not an output or intermediate tensor of "
            f"the graph (outputs: {graph_outputs})"
        )
    pool = None
    if head is not None and features == head.features:
        pool = _find_global_pool(job.proto, features)
        if pool is None:
            exposed.feature_map_note = "no global average pooling before the final linear layer"
    trial = copy.deepcopy(job.proto)
    extra: dict[str, str] = {}  # role → tensor name in the trial graph
    if features is not None:
        extra["features"] = features
    if head is not None:
        extra["head_output"] = head.output
    if pool is not None:
        extra["feature_map"] = _nchw_map(trial, pool[0], pool[1])
    values = _run_with_outputs(job, trial, image, probe, extra, results)

    if features is not None:
        width = _width(values["features"], image.probe_batch)
        if width is None:
            raise ExportError(
                f"{job.src}: features tensor {features!r} is {_describe_value(values['features'])} on a batch "
                f"of {image.probe_batch}, not B×D; name another with --features-output"
            )
        exposed.features, exposed.feature_dim = features, int(width)
        exposed.values[features] = values["features"]
        _add_output(job.proto, features, values["features"], image.fixed_batch)
    if head is not None:
        exposed.head_output = values["head_output"]
    if pool is not None:
        fmap = values["feature_map"]
        feats = exposed.values[features].reshape(fmap.shape[0], -1).astype(np.float64)
        pooled = fmap.astype(np.float64).mean(axis=(2, 3)) if fmap.ndim == _MAP_RANK else None
        if pooled is None or pooled.shape != feats.shape:
            exposed.feature_map_note = (f"the {pool[2]} input is {_describe_value(fmap)}, not "
                                        f"B×{exposed.feature_dim}×h×w")
        else:
            exposed.pool_diff = float(np.max(np.abs(pooled - feats)))
            if not np.allclose(pooled, feats, rtol=POOL_RTOL, atol=POOL_ATOL):
                exposed.feature_map_note = (f"the {pool[2]} over {pool[0]!r} differs from the features by "
                                            f"{exposed.pool_diff:.3g}: not a global average")
            else:
                exposed.feature_map = _nchw_map(job.proto, pool[0], pool[1])
                _add_output(job.proto, exposed.feature_map, fmap, image.fixed_batch)
                exposed.values[exposed.feature_map] = fmap
                exposed.feature_map_note = (f"input of the {pool[2]} before the final linear layer"
                                            + (" (transposed from NHWC)" if pool[1] == "NHWC" else ""))
    added = [n for n in (exposed.features, exposed.feature_map) if n is not None and n not in graph_outputs]
    if added:
        job.rewrites.append(f"intermediate tensors exposed as outputs: {added}")
        job.save_and_open()
    return exposed


def _run_with_outputs(job: _Adoption, trial, image: _ImageInput, probe: np.ndarray, extra: dict[str, str],
                      results: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """Values of ``extra`` tensors on ``probe``, adding those that are not graph outputs to ``trial``."""
    known = {role: results[name] for role, name in extra.items() if results.get(name) is not None}
    missing = {role: name for role, name in extra.items() if role not in known}
    if not missing:
        return known
    types = _tensor_types(trial)
    existing = {o.name for o in trial.graph.output}
    for name in dict.fromkeys(missing.values()):
        if name not in existing:
            trial.graph.output.append(_value_info(name, types.get(name, _ONNX_FLOAT), None))
    path = job.check_dir / MODEL_FILENAME
    save_onnx(trial, path)
    session = _session(path)
    names = list(dict.fromkeys(missing.values()))
    got = dict(zip(names, _run(session, image.name, probe, names), strict=True))
    return {**known, **{role: got[name] for role, name in missing.items()}}


def _nchw_map(proto, name: str, layout: str) -> str:
    """``name`` itself for an NCHW map; for NHWC, the output of an added Transpose to NCHW."""
    if layout == "NCHW":
        return name
    from onnx import helper

    new_name = _fresh_name(proto, f"{name}_nchw")
    proto.graph.node.append(helper.make_node("Transpose", [name], [new_name], perm=list(_NHWC_TO_NCHW),
                                             name=f"eac_to_nchw_{name}"))
    return new_name


def _add_output(proto, name: str, value: np.ndarray, fixed_batch: int | None) -> None:
    """Declare ``name`` a graph output (shape from its probe value, batch axis as the input's)."""
    if name in {o.name for o in proto.graph.output}:
        return
    types = _tensor_types(proto)
    shape: list[Any] = list(value.shape)
    shape[0] = fixed_batch if fixed_batch is not None else BATCH_DIM_NAME
    proto.graph.output.append(_value_info(name, types.get(name, _onnx_type_of(value)), shape))


# --------------------------------------------------------------------------- head check
@dataclass(frozen=True)
class _HeadCheck:
    passed: bool
    max_abs_diff: float | None
    reason: str

    def describe(self, head: _LinearHead | None) -> dict[str, Any] | None:
        """The manifest's ``source.head``: which layer, or why there is no head.npz."""
        if head is None or not self.passed:
            return {"file": None, "reason": self.reason}
        return {"file": HEAD_FILENAME, "node": head.node, "op": head.op, "features": head.features,
                "output": head.output, "then": list(head.after)}


def _check_head(head: _LinearHead | None, exposed: _Exposed, reason: str) -> _HeadCheck:
    """Stage 7: does head.npz reproduce the linear layer's output from the features on the probe batch?"""
    if head is None:
        return _HeadCheck(False, None, reason or "no final linear layer found")
    if exposed.features != head.features:
        return _HeadCheck(False, None, f"--features-output {exposed.features!r} is not the input of the final "
                                       f"linear layer ({head.features!r})")
    feats = exposed.values[head.features].reshape(exposed.head_output.shape[0], -1).astype(np.float64)
    target = exposed.head_output.reshape(feats.shape[0], -1).astype(np.float64)
    if feats.shape[1] != head.weight.shape[1] or target.shape[1] != head.weight.shape[0]:
        return _HeadCheck(False, None, f"the {head.op} weight is {head.weight.shape}, features "
                                       f"{feats.shape}, output {target.shape}")
    predicted = feats @ head.weight.T.astype(np.float64) + head.bias
    diff = float(np.max(np.abs(predicted - target)))
    tolerance = HEAD_ATOL + HEAD_RTOL[head.dtype] * float(np.max(np.abs(target)))
    if not diff <= tolerance:
        return _HeadCheck(False, diff, f"features @ weight.T + bias differs from the {head.op} output by "
                                       f"{diff:.3g} (tolerance {tolerance:.3g}); head.npz not written")
    return _HeadCheck(True, diff, "")


# --------------------------------------------------------------------------- output kind and batch axis
def _output_kind(job: _Adoption, image: _ImageInput, logits: str, probabilities: bool | None) -> tuple[str, str]:
    """Stage 8: logits or probabilities, and why."""
    if probabilities:
        return "probabilities", "given (--probabilities)"
    if probabilities is False:
        return "logits", "given (probabilities=False)"
    if _producer_is_softmax(job.proto, logits):
        return "probabilities", "the output is produced by a Softmax node"
    batch = image.probe_batch
    rows = [_run(job.session, image.name, image.batch_of(batch, job.rng), [logits])[0].reshape(batch, -1)
            for _ in range(PROBE_SAMPLES)]
    values = np.concatenate(rows).astype(np.float64)
    in_range = values.min() >= -PROB_RANGE_SLACK and values.max() <= 1 + PROB_RANGE_SLACK
    sums_to_one = np.allclose(values.sum(axis=1), 1.0, atol=PROB_SUM_ATOL)
    if in_range and sums_to_one:
        return "probabilities", f"outputs on {PROBE_SAMPLES * batch} random inputs lie in [0, 1] and sum to 1"
    return "logits", "no Softmax node produces the output and its values are not probabilities"


def _batch_axis(job: _Adoption, image: _ImageInput, output_names: list[str]) -> tuple[int | None, dict]:
    """Stage 9: make the batch axis symbolic when a larger batch gives the per-image results.

    Returns
    -------
    (int or None, dict)
        The manifest's fixed batch (None: dynamic) and the check's report.
    """
    fixed = image.fixed_batch
    dynamic = _make_batch_dynamic(job.proto, fixed)
    ok, report = _check_dynamic(job, dynamic, image, output_names)
    if ok:
        job.proto = dynamic
        if fixed is not None:
            job.rewrites.append(f"batch axis made dynamic (was fixed at {fixed})")
        return None, report
    if fixed is None:
        job.rewrites.append("symbolic batch axis does not work with batches > 1: the runtime runs batch 1")
    return image.probe_batch, report


def _check_dynamic(job: _Adoption, dynamic, image: _ImageInput, output_names) -> tuple[bool, dict[str, Any]]:
    """Does ``dynamic`` (symbolic batch) give, on a batch of another size, what the original gives per chunk?"""
    batch = image.probe_batch
    n = batch + 1 if batch > 1 else BATCH_CHECK_SIZE
    x = image.batch_of(n, job.rng)
    reference = _run_in_chunks(job.session, image.name, x, batch, output_names)
    report: dict[str, Any] = {"batch": n, "reference": f"runs with batch {batch}"}
    try:
        path = job.check_dir / MODEL_FILENAME
        save_onnx(dynamic, path)
        candidate = _session(path, quiet=True)  # failing here is an expected outcome, not worth a log line
        got = candidate.run(output_names, {image.name: x})
    except Exception as exc:  # ORT raises several types; any failure means "keep the fixed batch"
        report.update({"dynamic": False, "reason": first_line(exc)})
        return False, report
    diffs = {}
    for name, ref, val in zip(output_names, reference, got, strict=True):
        if val.shape != ref.shape:
            report.update({"dynamic": False, "reason": f"output {name!r} is {val.shape} for a batch of {n}, "
                                                       f"expected {ref.shape}"})
            return False, report
        diffs[name] = float(np.max(np.abs(val.astype(np.float64) - ref.astype(np.float64))))
        if not np.allclose(val, ref, rtol=BATCH_CHECK_RTOL, atol=BATCH_CHECK_ATOL):
            report.update({"dynamic": False, "max_abs_diff": diffs,
                           "reason": f"output {name!r} differs from per-image runs by {diffs[name]:.3g}"})
            return False, report
    report.update({"dynamic": True, "max_abs_diff": diffs})
    return True, report


# --------------------------------------------------------------------------- graph surgery
def _drop_initializer_inputs(job: _Adoption) -> None:
    """Remove initializers from ``graph.input`` (old exporters list weights as inputs)."""
    proto = job.proto
    graph = proto.graph
    init_names = {t.name for t in graph.initializer}
    kept = [i for i in graph.input if i.name not in init_names]
    dropped = len(graph.input) - len(kept)
    if dropped:
        del graph.input[:]
        graph.input.extend(kept)
        job.rewrites.append(f"{dropped} initializers removed from the graph inputs")
        if proto.ir_version < _MIN_IR_WITHOUT_INIT_INPUTS:
            proto.ir_version = _MIN_IR_WITHOUT_INIT_INPUTS
            job.rewrites.append("IR version raised to 4 (initializers need not be inputs)")


def _dims(value_info) -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _describe(values) -> str:
    return ", ".join(f"{v.name} {_dims(v) or '?'}" for v in values) or "none"


def _input_hw(height, width, input_size: int | None, src: Path) -> tuple[int, int]:
    static = isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0
    if static:
        if input_size is not None and (height, width) != (input_size, input_size):
            raise ExportError(f"{src}: the input is {height}×{width} but --input-size {input_size} was given")
        return int(height), int(width)
    if input_size is None:
        raise ExportError(f"{src}: the input's height/width are not fixed ({height}×{width}); give --input-size")
    if input_size <= 0:
        raise ExportError(f"--input-size must be positive, got {input_size}")
    return int(input_size), int(input_size)


def _set_static_hw(proto, layout: str, height: int, width: int) -> None:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    for axis, value in zip(axes, (height, width), strict=True):
        dims[axis].Clear()
        dims[axis].dim_value = value


def _fresh_name(proto, base: str) -> str:
    graph = proto.graph
    taken = {n for node in graph.node for n in node.output} | {i.name for i in graph.input}
    name = base
    while name in taken:
        name += "_"
    return name


def _flatten_if_4d(job: _Adoption, name: str | None, value: np.ndarray | None) -> str | None:
    """Stage: a B×K×1×1 output (logits or features) replaced by a Flatten of it; returns the output name."""
    if name is None or value is None or value.ndim != _MAP_RANK:
        return name
    from onnx import helper

    graph = job.proto.graph
    new_name = _fresh_name(job.proto, f"{name}_flat")
    graph.node.append(helper.make_node("Flatten", [name], [new_name], axis=1, name=f"eac_flatten_{name}"))
    for i, o in enumerate(graph.output):
        if o.name == name:
            dims = _dims(o)
            elem = o.type.tensor_type.elem_type
            shape = [dims[0] if dims else None, dims[1] if len(dims) > 1 else None]
            graph.output.remove(o)
            graph.output.insert(i, _value_info(new_name, elem, shape))
            break
    job.rewrites.append(f"output {name!r} (B×K×1×1) flattened to {new_name!r} (B×K)")
    job.save_and_open()
    return new_name


def _make_batch_dynamic(proto, batch: int | None):
    """A copy of ``proto`` whose input batch axis is symbolic.

    Outputs whose first axis is the batch (``batch`` when static, or not static)
    get the same symbolic axis; other outputs keep their shapes.
    """
    dyn = copy.deepcopy(proto)
    graph = dyn.graph
    for i, value in enumerate(list(graph.input) + list(graph.output)):
        t = value.type.tensor_type
        if not t.HasField("shape") or len(t.shape.dim) < 1:
            continue
        first = t.shape.dim[0]
        if i == 0 or not first.HasField("dim_value") or first.dim_value == batch:
            first.Clear()
            first.dim_param = BATCH_DIM_NAME
    # Intermediate shapes recorded for the fixed batch would contradict the new one.
    del graph.value_info[:]
    return dyn


def _opset(proto) -> int | None:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _producers(proto) -> dict[str, Any]:
    return {o: n for n in proto.graph.node for o in n.output}


def _walk_back(producers: dict[str, Any], name: str, ops: Sequence[str],
               any_cast: bool = False) -> tuple[str, tuple[str, ...]]:
    """Follow ``name`` back through nodes of ``ops`` (first input); returns the tensor reached and the ops.

    A ``Cast`` in ``ops`` is passed only when it converts to float32/float64 (the values unchanged),
    unless ``any_cast``.
    """
    passed: list[str] = []
    for _ in range(len(producers) + 1):
        node = producers.get(name)
        if node is None or node.op_type not in ops or not node.input:
            break
        if node.op_type == "Cast" and not any_cast and _attributes(node).get("to") not in _WIDE_FLOAT_TYPES:
            break  # a cast that may change the values (to float16, an integer) ends the path
        passed.append(node.op_type)
        name = node.input[0]
    return name, tuple(reversed(passed))


def _attributes(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant(proto, producers: dict[str, Any], name: str) -> np.ndarray | None:
    """The value of a constant tensor (initializer, Constant node, or Identity/Transpose of one), else None."""
    from onnx import numpy_helper

    for init in proto.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Constant":
        value = _attributes(node).get("value")
        return None if value is None else numpy_helper.to_array(value)
    if node.op_type == "Identity":
        return _constant(proto, producers, node.input[0])
    if node.op_type == "Transpose":
        inner = _constant(proto, producers, node.input[0])
        perm = _attributes(node).get("perm")
        return None if inner is None else np.transpose(inner, perm)
    return None


def _tensor_types(proto) -> dict[str, int]:
    """ONNX element types of the graph's tensors, by shape inference (empty when it fails)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # inference fails on some valid graphs (custom ops, > 2 GB)
        return {}
    graph = inferred.graph
    return {v.name: v.type.tensor_type.elem_type
            for v in [*graph.value_info, *graph.output, *graph.input] if v.type.tensor_type.elem_type}


def _value_info(name: str, elem_type: int, shape):
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, shape)


def _weight_dtype(weight: np.ndarray) -> str:
    return "float16" if weight.dtype == np.float16 else "float32"


def _onnx_type_of(value: np.ndarray) -> int:
    return _ONNX_FLOAT16 if value.dtype == np.float16 else _ONNX_FLOAT


def _producer_is_softmax(proto, output: str) -> bool:
    producers = _producers(proto)
    name, _ = _walk_back(producers, output, _PASSTHROUGH_OPS, any_cast=True)
    node = producers.get(name)
    return node is not None and node.op_type == "Softmax"


# --------------------------------------------------------------------------- running
def _session(path: Path, quiet: bool = False):
    return cpu_session(path, "this model", quiet=quiet)


def _open_fitting_ir(job: _Adoption) -> None:
    """Open the graph; if this onnxruntime reads only older IR versions, lower the IR version and retry.

    Files saved by a newer onnx package carry a newer IR version than the
    operators they use need; ONNX Runtime refuses them outright.
    """
    try:
        job.save_and_open()
    except ExportError as exc:
        match = _IR_TOO_NEW.search(str(exc))
        if match is None or job.proto.ir_version <= int(match.group(1)):
            raise
        old, job.proto.ir_version = job.proto.ir_version, int(match.group(1))
        job.save_and_open()
        job.rewrites.append(
            f"IR version lowered from {old} to {job.proto.ir_version} (the newest this onnxruntime reads)")


def _run(session, input_name: str, x: np.ndarray, output_names=None) -> list[np.ndarray]:
    try:
        return session.run(output_names, {input_name: x})
    except Exception as exc:
        raise ExportError(f"ONNX Runtime fails to run this model on a {x.shape} input ({first_line(exc)})") from exc


def _run_in_chunks(session, input_name, x: np.ndarray, batch: int, output_names) -> list[np.ndarray]:
    """Run a fixed-batch session on any number of items (padding the last chunk)."""
    parts = []
    n = x.shape[0]
    for start in range(0, n, batch):
        chunk = x[start : start + batch]
        pad = batch - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        parts.append(_run(session, input_name, chunk, output_names))
    return [np.concatenate([p[j] for p in parts])[:n] for j in range(len(output_names))]


def _np_dtype(dtype: str):
    return np.float16 if dtype == "float16" else np.float32


def _nchw_to_layout(shape: tuple[int, int, int, int], layout: str) -> tuple[int, ...]:
    b, c, h, w = shape
    return (b, c, h, w) if layout == "NCHW" else (b, h, w, c)


def _as_array(value) -> np.ndarray | None:
    """An ORT output as an array, or None for non-tensor outputs (sequences of maps from ZipMap...)."""
    return value if isinstance(value, np.ndarray) else None


def _describe_value(value: np.ndarray | None) -> list | str:
    return "not a tensor" if value is None else [*value.shape, str(value.dtype)]


def _width(value: np.ndarray | None, batch: int) -> int | None:
    """K of a float B×K or B×K×1×1 tensor, else None (maps, sequences, class indices...)."""
    if value is None or not np.issubdtype(value.dtype, np.floating) or value.shape[:1] != (batch,):
        return None
    if value.ndim == 2 or (value.ndim == _MAP_RANK and value.shape[2:] == (1, 1)):
        return int(value.shape[1])
    return None


__all__ = ["import_onnx"]
