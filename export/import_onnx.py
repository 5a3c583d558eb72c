"""Adopt an ONNX image classifier "as found in the wild" as an eac classifier folder.

Such files often have a batch axis fixed at 1, softmax already applied, odd
tensor names (``data_0:0``), weights listed as graph inputs, old opsets (9 and
up) and sometimes a ``N×K×1×1`` output. :func:`import_onnx` takes them as they are:

* initializers listed among the graph inputs are removed from the inputs, so the
  image is the only input left;
* the single image input must be 4-D float with 3 channels, NCHW (``N×3×H×W``)
  or NHWC (``N×H×W×3``); anything else is refused naming what was found;
* the logits output must be ``B×K`` (``B×K×1×1`` is flattened by an added node);
* a fixed batch axis is made symbolic when the graph allows it, which is checked
  by running a batch of 2 against per-image runs; when it does not (a ``Reshape``
  with a hard-coded batch, say), the batch stays fixed and the manifest records
  it, so the runtime loops;
* softmax outputs are detected (a ``Softmax`` node produces the output, or the
  outputs on random inputs are probabilities) or forced with ``probabilities=True``
  (``False`` forces logits); the manifest records which, and why;
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
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.manifest import file_entry, file_sha256, write_manifest
from ._torch_utils import StagedFolder, first_line, read_labels
from .errors import ExportError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Default resize of the shorter side relative to the crop: ImageNet's 256 for 224.
RESIZE_RATIO = 256.0 / 224.0
PIXEL_SCALE = 1.0 / 255.0
MODEL_FILENAME = "classifier.onnx"
EXTERNAL_DATA_FILENAME = "classifier.onnx.data"
#: Protobuf's limit; larger models are saved with external data.
_PROTO_LIMIT_BYTES = 2 * 1024**3 - 64 * 1024**2
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
#: Ops that pass a tensor through unchanged in value (walked back to find a Softmax).
_PASSTHROUGH_OPS = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Dropout")
_FLOAT_TYPES = {1: "float32", 10: "float16"}  # onnx.TensorProto.FLOAT / FLOAT16
BATCH_DIM_NAME = "batch"
#: ONNX Runtime's message for files with a too-new IR version.
_IR_TOO_NEW = re.compile(r"max supported IR version: (\d+)")
#: ONNX Runtime log severities.
_ORT_ERRORS = 3
_ORT_FATAL_ONLY = 4
#: Sub-folder of the staging folder where the dynamic-batch candidate is tried.
_CHECK_DIR = ".batch-check"


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
        Name of a ``B×D`` features output of the graph.
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
        output: the message lists the inputs and outputs found), inconsistent
        options, unwritable output.
    """
    import onnx

    src = Path(model)
    if not src.is_file():
        raise ExportError(f"{src}: no such ONNX file")
    if channel_order not in ("RGB", "BGR"):
        raise ExportError(f"--channel-order must be RGB or BGR, got {channel_order!r}")
    label_list = read_labels(labels)
    try:
        proto = onnx.load(str(src))
    except Exception as exc:
        raise ExportError(f"{src}: not a readable ONNX model ({first_line(exc)})") from exc

    rewrites: list[str] = []
    assumed: list[str] = []
    _drop_initializer_inputs(proto, rewrites)
    image = _image_input(proto, src)
    name, layout, dims, dtype = image["name"], image["layout"], image["dims"], image["dtype"]
    height, width = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    height, width = _input_hw(height, width, input_size, src)
    fixed_batch = dims[0] if isinstance(dims[0], int) else None
    if isinstance(dims[0], int) and dims[0] < 1:
        fixed_batch = None
    if not all(isinstance(d, int) for d in (dims[1], dims[2], dims[3])):
        _set_static_hw(proto, layout, height, width)
        rewrites.append(f"input {name!r}: spatial size fixed to {height}×{width}")

    crop_side = height if height == width else None
    if resize is None:
        resize = round(max(height, width) * RESIZE_RATIO)  # the crop fits either orientation
        assumed.append(f"resize {resize} (round(crop × 256/224))")
    elif resize < max(height, width):
        raise ExportError(f"--resize {resize} is smaller than the input size {height}×{width}")
    if mean is None:
        mean = IMAGENET_MEAN
        assumed.append("ImageNet mean")
    if std is None:
        std = IMAGENET_STD
        assumed.append("ImageNet std")
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or not np.all(np.isfinite(mean)):
        raise ExportError("--mean and --std take three numbers each (R G B, 0-1 scale), std positive")

    out = Path(out)
    staged = StagedFolder(out)
    with staged as tmp:
        path = tmp / MODEL_FILENAME
        files = _save(proto, path)
        session = _open_fitting_ir(proto, path, rewrites)
        probe_batch = fixed_batch or 1
        rng = np.random.default_rng(PROBE_SEED)
        shape = _nchw_to_layout((probe_batch, 3, height, width), layout)
        probe = rng.standard_normal(shape).astype(_np_dtype(dtype))
        results = {
            n: _as_array(v) for n, v in zip([o.name for o in session.get_outputs()], _run(session, name, probe))
        }
        logits_name, features_name, num_classes, feature_dim = _pick_outputs(
            results, probe_batch, features_output, proto, src, session
        )
        logits_src, features_src = logits_name, features_name  # names before any rewrite
        if results[logits_name].ndim == 4:
            logits_name = _flatten_output(proto, logits_name, rewrites)
            files = _save(proto, path)
            session = _session(path)
        if features_name is not None and results[features_name].ndim == 4:
            features_name = _flatten_output(proto, features_name, rewrites)
            files = _save(proto, path)
            session = _session(path)
        output_names = [logits_name] + ([features_name] if features_name else [])

        kind, kind_reason = _output_kind(proto, session, name, logits_name, layout, dtype, height, width,
                                         probe_batch, probabilities, rng)

        batch, batch_check = fixed_batch, None
        dynamic = _make_batch_dynamic(proto, fixed_batch)
        check_dir = tmp / _CHECK_DIR
        check_dir.mkdir()
        ok, batch_check = _check_dynamic(dynamic, check_dir / MODEL_FILENAME, session, name, output_names, layout,
                                         dtype, height, width, probe_batch, rng)
        del session
        shutil.rmtree(check_dir)
        if ok:
            proto = dynamic
            files = _save(proto, path)
            batch = None
            if fixed_batch is not None:
                rewrites.append(f"batch axis made dynamic (was fixed at {fixed_batch})")
        else:
            batch = fixed_batch or 1
            if fixed_batch is None:
                rewrites.append("symbolic batch axis does not work with batches > 1: the runtime runs batch 1")

        if label_list is not None and len(label_list) != num_classes:
            raise ExportError(f"{labels}: {len(label_list)} labels but the model has {num_classes} classes")

        manifest = {
            "kind": "classifier",
            "opset": _opset(proto),
            "precision": "fp16" if dtype == "float16" else "fp32",
            "files": {role: file_entry(tmp, fname) for role, fname in files.items()},
            "input": {"name": name, "height": height, "width": width, "batch": batch, "layout": layout,
                      "dtype": dtype},
            "outputs": {"logits": logits_name, "features": features_name},
            "output_kind": kind,
            "num_classes": num_classes,
            "feature_dim": feature_dim,
            "labels": label_list,
            "preprocess": {
                "resize": int(resize),
                "crop": crop_side if crop_side is not None else [height, width],
                "mean": mean,
                "std": std,
                "stats_order": "RGB",
                "channel_order": channel_order,
                "scale": PIXEL_SCALE,
            },
            "validation": {"batch_check": batch_check},
            "source": {
                "onnx": str(src.resolve()),
                "sha256": file_sha256(src),
                "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
                "output_kind_reason": kind_reason,
                # outputs not used, with their shapes on a batch of the probe size: a features
                # output among them can be named with --features-output
                "other_outputs": {
                    n: _describe_value(v) for n, v in results.items() if n not in (logits_src, features_src)
                },
                "rewrites": rewrites,
                "assumed": assumed,
                "head": None,
            },
        }
        write_manifest(tmp, manifest)
        staged.commit()
    from ..engine.manifest import read_manifest

    return read_manifest(out, "classifier")


# --------------------------------------------------------------------------- graph surgery
def _drop_initializer_inputs(proto, rewrites: list[str]) -> None:
    """Remove initializers from ``graph.input`` (old exporters list weights as inputs)."""
    graph = proto.graph
    init_names = {t.name for t in graph.initializer}
    kept = [i for i in graph.input if i.name not in init_names]
    dropped = len(graph.input) - len(kept)
    if dropped:
        del graph.input[:]
        graph.input.extend(kept)
        rewrites.append(f"{dropped} initializers removed from the graph inputs")
        if proto.ir_version < 4:  # IR < 4 requires initializers to be inputs
            proto.ir_version = 4
            rewrites.append("IR version raised to 4 (initializers need not be inputs)")


def _dims(value_info) -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _describe(values) -> str:
    return ", ".join(f"{v.name} {_dims(v) or '?'}" for v in values) or "none"


def _image_input(proto, src: Path) -> dict[str, Any]:
    graph = proto.graph
    inputs = list(graph.input)
    found = f"inputs: {_describe(inputs)}; outputs: {_describe(graph.output)}"
    if len(inputs) != 1:
        raise ExportError(f"{src}: not an image classifier: needs exactly one image input ({found})")
    inp = inputs[0]
    dims = _dims(inp)
    elem = inp.type.tensor_type.elem_type
    if len(dims) != 4:
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
    return {"name": inp.name, "layout": layout, "dims": dims, "dtype": _FLOAT_TYPES[elem]}


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
    for axis, value in zip(axes, (height, width)):
        dims[axis].Clear()
        dims[axis].dim_value = value


def _graph_output_names(proto) -> list[str]:
    return [o.name for o in proto.graph.output]


def _flatten_output(proto, name: str, rewrites: list[str]) -> str:
    """Replace a B×K×1×1 graph output by a Flatten of it; returns the new output name."""
    from onnx import helper

    graph = proto.graph
    new_name = f"{name}_flat"
    taken = {n for node in graph.node for n in node.output} | {i.name for i in graph.input}
    while new_name in taken:
        new_name += "_"
    graph.node.append(helper.make_node("Flatten", [name], [new_name], axis=1, name=f"eac_flatten_{name}"))
    for i, o in enumerate(graph.output):
        if o.name == name:
            dims = _dims(o)
            elem = o.type.tensor_type.elem_type
            shape = [dims[0] if dims else None, dims[1] if len(dims) > 1 else None]
            graph.output.remove(o)
            graph.output.insert(i, helper.make_tensor_value_info(new_name, elem, shape))
            break
    rewrites.append(f"output {name!r} (B×K×1×1) flattened to {new_name!r} (B×K)")
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


def _save(proto, path: Path) -> dict[str, str]:
    """Save ``proto`` (with external data when over protobuf's limit); returns manifest file roles."""
    import onnx

    try:
        big = proto.ByteSize() > _PROTO_LIMIT_BYTES
    except Exception:  # noqa: BLE001 - ByteSize itself fails past 2 GiB on some protobuf builds
        big = True
    try:
        if big:
            onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=EXTERNAL_DATA_FILENAME)
            return {"model": path.name, "model_data": EXTERNAL_DATA_FILENAME}
        onnx.save_model(proto, str(path))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot write the model ({first_line(exc)})") from exc
    return {"model": path.name}


# --------------------------------------------------------------------------- running
def _session(path: Path, quiet: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = _ORT_FATAL_ONLY if quiet else _ORT_ERRORS
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load this model ({first_line(exc)})") from exc


def _open_fitting_ir(proto, path: Path, rewrites: list[str]):
    """Open ``path``; if this onnxruntime reads only older IR versions, lower the IR version and retry.

    Files saved by a newer onnx package carry a newer IR version than the
    operators they use need; ONNX Runtime refuses them outright.
    """
    try:
        return _session(path)
    except ExportError as exc:
        match = _IR_TOO_NEW.search(str(exc))
        if match is None or proto.ir_version <= int(match.group(1)):
            raise
        old, proto.ir_version = proto.ir_version, int(match.group(1))
        _save(proto, path)
        rewrites.append(f"IR version lowered from {old} to {proto.ir_version} (the newest this onnxruntime reads)")
        return _session(path)


def _run(session, input_name: str, x: np.ndarray, output_names=None) -> list[np.ndarray]:
    try:
        return session.run(output_names, {input_name: x})
    except Exception as exc:
        raise ExportError(f"ONNX Runtime fails to run this model on a {x.shape} input ({first_line(exc)})") from exc


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


def _pick_outputs(results: dict[str, np.ndarray], batch: int, features_output, proto, src: Path, session):
    found = (
        f"inputs: {[(i.name, i.shape) for i in session.get_inputs()]}; "
        f"outputs on a batch of {batch}: {[(n, _describe_value(v)) for n, v in results.items()]}"
    )

    def as_2d(name):
        v = results[name]
        if v is None or not np.issubdtype(v.dtype, np.floating):  # maps, sequences, class indices
            return None
        if v.ndim == 2 and v.shape[0] == batch:
            return v.shape[1]
        if v.ndim == 4 and v.shape[0] == batch and v.shape[2:] == (1, 1):
            return v.shape[1]
        return None

    features_name, feature_dim = None, None
    if features_output is not None:
        if features_output not in results:
            raise ExportError(f"{src}: --features-output {features_output!r} is not an output ({found})")
        feature_dim = as_2d(features_output)
        if feature_dim is None:
            raise ExportError(f"{src}: --features-output {features_output!r} is not B×D ({found})")
        features_name = features_output
    candidates = [n for n in results if n != features_name and (as_2d(n) or 0) >= 2]
    if not candidates:
        raise ExportError(f"{src}: not a classifier: no B×K output (K ≥ 2) ({found})")
    logits = candidates[0]
    return logits, features_name, int(as_2d(logits)), None if feature_dim is None else int(feature_dim)


def _producer_is_softmax(proto, output: str) -> bool:
    producers = {o: n for n in proto.graph.node for o in n.output}
    name = output
    for _ in range(len(proto.graph.node) + 1):
        node = producers.get(name)
        if node is None:
            return False
        if node.op_type == "Softmax":
            return True
        if node.op_type not in _PASSTHROUGH_OPS or not node.input:
            return False
        name = node.input[0]
    return False


def _output_kind(proto, session, input_name, logits_name, layout, dtype, height, width, batch,
                 probabilities, rng) -> tuple[str, str]:
    if probabilities:
        return "probabilities", "given (--probabilities)"
    if probabilities is False:
        return "logits", "given (probabilities=False)"
    if _producer_is_softmax(proto, logits_name):
        return "probabilities", "the output is produced by a Softmax node"
    rows = []
    for _ in range(PROBE_SAMPLES):
        x = rng.standard_normal(_nchw_to_layout((batch, 3, height, width), layout)).astype(_np_dtype(dtype))
        out = _run(session, input_name, x, [logits_name])[0]
        rows.append(out.reshape(batch, -1).astype(np.float64))
    values = np.concatenate(rows)
    in_range = values.min() >= -PROB_RANGE_SLACK and values.max() <= 1 + PROB_RANGE_SLACK
    sums_to_one = np.allclose(values.sum(axis=1), 1.0, atol=PROB_SUM_ATOL)
    if in_range and sums_to_one:
        return "probabilities", f"outputs on {PROBE_SAMPLES * batch} random inputs lie in [0, 1] and sum to 1"
    return "logits", "no Softmax node produces the output and its values are not probabilities"


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


def _check_dynamic(dynamic, path: Path, session, input_name, output_names, layout, dtype, height, width,
                   batch, rng) -> tuple[bool, dict[str, Any]]:
    """Does ``dynamic`` (symbolic batch) give, on a batch of another size, what the original gives per chunk?"""
    n = batch + 1 if batch > 1 else BATCH_CHECK_SIZE
    x = rng.standard_normal(_nchw_to_layout((n, 3, height, width), layout)).astype(_np_dtype(dtype))
    reference = _run_in_chunks(session, input_name, x, batch, output_names)
    report: dict[str, Any] = {"batch": n, "reference": f"runs with batch {batch}"}
    try:
        _save(dynamic, path)
        candidate = _session(path, quiet=True)  # failing here is an expected outcome, not worth a log line
        got = candidate.run(output_names, {input_name: x})
    except Exception as exc:  # noqa: BLE001 - ORT raises several types; any failure means "keep the fixed batch"
        report.update({"dynamic": False, "reason": first_line(exc)})
        return False, report
    diffs = {}
    for name, ref, val in zip(output_names, reference, got):
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
