"""``eac export sam``: SAM's image encoder and a *batched* prompt decoder to ONNX.

Two graphs are written (names and axes from :mod:`eac.export.spec`):

``encoder.onnx``
    ``image`` 1×3×S×S float32 (S = 1024: the image resized so its longest side
    is S, normalised with SAM's pixel mean/std *outside* the graph, zero-padded
    bottom/right) → ``image_embeddings`` 1×C×S/16×S/16 (C = 256).
``decoder.onnx``
    ``image_embeddings``, ``point_coords`` B×P×2 (x, y in the S frame),
    ``point_labels`` B×P float32 (1 foreground, 0 background, -1 padding) →
    ``low_res_masks`` B×3×S/4×S/4 logits and ``iou_predictions`` B×3, i.e.
    ``SamPredictor.predict_torch(points, labels, multimask_output=True)`` for B
    prompt sets at once, with B and P dynamic.

segment-anything's ``MaskDecoder`` copies the image embedding once per prompt
with ``repeat_interleave``; the decoder graph here is built by
:class:`~eac.export.sam_graphs.FactoredPromptDecoder`, a module of its own
around SAM's submodules: the embedding stays batch 1 and broadcasts against
the B prompts, so the prompt-independent parts of the two-way transformer's
first layer (the image side's key/value and query projections, the dense
positional encoding and the no-mask embedding) are computed once per call
instead of B times; the per-prompt attention products are re-associated so
that no N×C image-token tensor is projected per prompt (SAM's decoder: about
0.94 → 0.41 GMAC per prompt in the transformer); the output upscaling runs as
two channels-last matrix products. The graph is valid for every B. The
manifest records the layout as ``decoder.graph`` (``"factored"``; folders
without it hold :class:`~eac.export.sam_graphs.BatchedPromptDecoder`, SAM's
operation order — both have the same inputs and outputs).

Every export is validated: ONNX Runtime runs both graphs on inputs unlike the
tracing inputs (another image, other prompt counts) and
:func:`eac.export.validate.compare_outputs` checks names, shapes and values
against the original PyTorch modules (fp32). Files are written into a hidden
sibling folder that is renamed to ``out`` only when everything succeeded.

``--fp16`` halves the weights and activations but keeps every LayerNorm
(``nn.LayerNorm`` and SAM's ``LayerNorm2d``) and every softmax in fp32, with
fp32 graph inputs and outputs; it is validated against fp32 PyTorch with the
spec's ``tolerance_fp16``. Graphs above 2 GB (ViT-H) keep their weights in one
external data file next to the ``.onnx`` (``encoder.onnx.data``), listed in the
manifest.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine.manifest import (
    RECOMMENDED_SETTINGS_KEY,
    SamDecoderSpec,
    SamEncoderSpec,
    SamManifest,
    file_sha256,
    read_manifest,
)
from ._torch_utils import onnx_export, require_torch
from .common import StagedFolder, check_output_folder, cpu_session, file_entries, first_line, save_onnx
from .errors import CheckpointError, ExportError, ValidationError
from .sam_loader import OFFICIAL_CHECKPOINTS, RECOMMENDED_SETTINGS, architecture, ensure_checkpoint, load_sam
from .spec import DEFAULT_OPSET, MIN_OPSET, SAM_DECODER, SAM_DECODER_CONTEXT, SAM_ENCODER, SAM_PROMPT_DECODER
from .validate import check_io_names, compare_outputs

#: Mask logits are thresholded at this value (``Sam.mask_threshold``).
MASK_THRESHOLD = 0.0
#: Low-resolution masks are this many times smaller than the encoder input.
LOW_RES_FACTOR = 4
#: Seeds of the synthetic tracing and validation inputs (different on purpose).
TRACE_SEED = 0
VALIDATION_SEED = 1
#: Prompt batches used for tracing and for validation: (B, P) per case.
TRACE_PROMPTS = (3, 2)
VALIDATION_PROMPTS = ((5, 1), (2, 3))
#: Height of the validation image before padding (a landscape image: exercises the padding).
VALIDATION_IMAGE_ASPECT = 0.75
PADDING_NOTE = "zeros bottom-right after normalisation"
#: Decoder layouts ``export_sam_model(decoder_graph=...)`` writes: ``"context"`` (default) splits the
#: factored decoder into ``decoder_context.onnx`` (once per image) and ``decoder.onnx`` (per prompt batch);
#: ``"factored"`` and ``"batched"`` write one ``decoder.onnx`` taking the image embeddings.
DECODER_GRAPH_CHOICES = ("context", "factored", "batched")
DEFAULT_DECODER_GRAPH = "context"
#: Manifest role of the context graph's file.
CONTEXT_ROLE = "decoder_context"
#: ``--decoder-precision``: the per-prompt decoder in fp32, fp16 (norms and softmax in fp32) or int8
#: (ONNX Runtime dynamic quantisation of its constant-weight matrix products, activations quantised per call).
DECODER_PRECISIONS = ("fp32", "fp16", "int8")
#: The precision check: a grid of single-point prompts on the validation image, every candidate kept.
PRECISION_GRID = 16
PRECISION_BATCH = 64
PRECISION_TIMED_RUNS = 2
#: Names :mod:`eac.export.sam_graphs` (torch) provides; reachable here, imported on first use.
_GRAPH_NAMES = ("BatchedPromptDecoder", "FactoredPromptDecoder", "SamEncoderGraph", "reference_decoder",
                "synthetic_image", "synthetic_prompts")


def __getattr__(name: str):
    """``sam.BatchedPromptDecoder`` etc.: the torch modules, imported only when asked for."""
    if name in _GRAPH_NAMES:
        from . import sam_graphs

        return getattr(sam_graphs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- ONNX files ----------------------------------------------------------------------------

def _wrap_softmax_fp32(model) -> int:
    """Run every ``Softmax`` of an fp16 graph in fp32 (Cast → Softmax → Cast); returns the count."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    nodes = []
    count = 0
    for node in graph.node:
        if node.op_type != "Softmax":
            nodes.append(node)
            continue
        count += 1
        src, dst = node.input[0], node.output[0]
        up, down = f"{src}__fp32_in_{count}", f"{dst}__fp32_out_{count}"
        nodes.append(helper.make_node("Cast", [src], [up], to=TensorProto.FLOAT, name=f"softmax_fp32_in_{count}"))
        soft = onnx.NodeProto()
        soft.CopyFrom(node)
        soft.input[0] = up
        soft.output[0] = down
        nodes.append(soft)
        nodes.append(helper.make_node("Cast", [down], [dst], to=TensorProto.FLOAT16, name=f"softmax_fp32_out_{count}"))
    del graph.node[:]
    graph.node.extend(nodes)
    # value_info of softmax outputs may now carry stale types; drop them (ORT re-infers).
    stale = {n.output[0] for n in nodes if n.op_type == "Cast" and n.name.startswith("softmax_fp32_out_")}
    keep = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    return count


def _export_graph(module, args: tuple, spec, folder: Path, opset: int, fp16: bool) -> list[str]:
    """Trace ``module`` with the TorchScript exporter (:func:`onnx_export`), post-process, save; returns file names."""
    import onnx
    import torch

    scratch = Path(tempfile.mkdtemp(prefix="trace-", dir=folder))
    try:
        traced = scratch / spec.filename
        with torch.no_grad(), warnings.catch_warnings():
            # segment-anything's encoder turns shapes into Python numbers: fine for a fixed input size
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # EfficientViT's strided slices: the exporter keeps them as Slice nodes (correct, just not folded)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
            onnx_export(
                module, args, traced,
                input_names=list(spec.inputs), output_names=list(spec.outputs),
                dynamic_axes={k: dict(v) for k, v in spec.dynamic_axes.items()} or None,
                opset_version=opset, do_constant_folding=True,
            )
        model = onnx.load(str(traced))  # also reads external data the exporter may have written
        if fp16:
            _wrap_softmax_fp32(model)
        model.producer_name = "eac"
        return save_onnx(model, folder / spec.filename)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- export --------------------------------------------------------------------------------

def prompt_frame_size(sam) -> int:
    """Side of the frame point prompts are given in (the prompt encoder's input; 1024 for every SAM).

    SAM's encoder input is that frame too; EfficientViT-SAM-L encodes a 512 image but
    keeps SAM's 1024 prompt frame.
    """
    return int(max(sam.prompt_encoder.input_image_size))


def _pixel_stats(values) -> tuple[float, float, float]:
    """SAM's ``pixel_mean`` / ``pixel_std`` buffers (or a plain tuple) as three floats."""
    flat = values.flatten().tolist() if hasattr(values, "flatten") else list(values)
    return tuple(float(v) for v in flat)  # type: ignore[return-value]


def _architecture_info(sam, image_size: int, channels: int) -> dict[str, Any]:
    """What the manifest records about the encoder architecture."""
    described = getattr(sam, "architecture", None)
    if described is not None and hasattr(described, "describe"):
        return {**described.describe(), "prompt_embed_dim": channels}
    arch = sam.image_encoder
    info = {
        "encoder_embed_dim": int(arch.patch_embed.proj.out_channels),
        "encoder_depth": len(arch.blocks),
        "prompt_embed_dim": channels,
        "image_size": image_size,
    }
    proj = getattr(getattr(arch, "patch_embed", None), "proj", None)
    if proj is not None and hasattr(proj, "kernel_size"):  # segment-anything's ViT: its patch and grid sizes
        info["patch_size"] = int(proj.kernel_size[0])
        info["embedding_size"] = image_size // info["patch_size"]
    return info


def _validate(sam, folder: Path, fp16: bool, embedding_hw: tuple[int, int], image_size: int,
              log: Callable[[str], None], context=None, decoder_low: bool | None = None) -> dict[str, Any]:
    """Compare ONNX Runtime with fp32 PyTorch on fresh inputs; raises ValidationError.

    ``context``: the :class:`~eac.export.sam_graphs.FactoredPromptDecoder` whose
    ``image_context`` the folder's ``decoder_context.onnx`` computes (None: one
    decoder graph taking the embeddings). The decoder's outputs are always compared
    with segment-anything's own prompt encoder and mask decoder, fed the ONNX
    context (so the check covers both graphs). ``decoder_low``: the decoder is
    fp16 or int8 (its outputs are held to the spec's fp16 tolerances); default ``fp16``.
    """
    decoder_low = fp16 if decoder_low is None else decoder_low
    import torch

    from .sam_graphs import reference_decoder, synthetic_image, synthetic_prompts

    height = round(image_size * VALIDATION_IMAGE_ASPECT)
    image = synthetic_image(image_size, height, image_size, VALIDATION_SEED)
    log("validating encoder")
    encoder = cpu_session(folder / SAM_ENCODER.filename, "the SAM encoder graph")
    check_io_names(encoder, SAM_ENCODER.inputs, SAM_ENCODER.outputs, "SAM encoder")
    with torch.no_grad():
        ref_embed = sam.image_encoder(torch.from_numpy(image))
    got_embed = encoder.run(None, {SAM_ENCODER.inputs[0]: image})[0]
    enc_name = SAM_ENCODER.outputs[0]
    encoder_diff = compare_outputs({enc_name: ref_embed.numpy()}, {enc_name: got_embed},
                                   SAM_ENCODER.tolerances(fp16), "SAM encoder")
    del encoder

    log("validating decoder")
    spec = SAM_PROMPT_DECODER if context is not None else SAM_DECODER
    decoder = cpu_session(folder / spec.filename, "the SAM decoder graph")
    check_io_names(decoder, spec.inputs, spec.outputs, "SAM decoder")
    embed_name, coords_name, labels_name = spec.inputs
    embeddings = ref_embed.numpy()
    context_diff = None
    if context is not None:
        session = cpu_session(folder / SAM_DECODER_CONTEXT.filename, "the SAM decoder context graph")
        check_io_names(session, SAM_DECODER_CONTEXT.inputs, SAM_DECODER_CONTEXT.outputs, "SAM decoder context")
        with torch.no_grad():
            ref_context = context.image_context(ref_embed).float().numpy()
        got_context = session.run(None, {SAM_DECODER_CONTEXT.inputs[0]: embeddings})[0]
        name = SAM_DECODER_CONTEXT.outputs[0]
        context_diff = compare_outputs({name: ref_context}, {name: got_context},
                                       SAM_DECODER_CONTEXT.tolerances(decoder_low), "SAM decoder context")
        embeddings = got_context
    decoder_diff = {name: 0.0 for name in SAM_DECODER.outputs}
    cases = []
    for case, (batch, points) in enumerate(VALIDATION_PROMPTS):
        coords, labels = synthetic_prompts(batch, points, prompt_frame_size(sam), VALIDATION_SEED + case,
                                           mixed_labels=points > 1)
        ref = reference_decoder(sam, ref_embed, torch.from_numpy(coords), torch.from_numpy(labels))
        got = decoder.run(None, {embed_name: embeddings, coords_name: coords, labels_name: labels})
        diff = compare_outputs(
            {name: value.numpy() for name, value in zip(SAM_DECODER.outputs, ref, strict=True)},
            dict(zip(SAM_DECODER.outputs, got, strict=True)),
            SAM_DECODER.tolerances(decoder_low), f"SAM decoder (B={batch}, P={points})",
        )
        cases.append({"batch": batch, "points": points, "max_abs_diff": diff})
        decoder_diff = {k: max(decoder_diff[k], diff[k]) for k in decoder_diff}
    result = {
        "reference": "PyTorch fp32 (the model's own modules: image encoder, SAM prompt encoder and mask decoder)",
        "runtime": "onnxruntime CPUExecutionProvider",
        "encoder": {"max_abs_diff": encoder_diff, "tolerance": SAM_ENCODER.tolerances(fp16),
                    "input": f"synthetic {height}x{image_size} image, padded, seed {VALIDATION_SEED}"},
        "decoder": {"max_abs_diff": decoder_diff, "tolerance": SAM_DECODER.tolerances(decoder_low),
                    "cases": cases},
        "embedding_hw": list(embedding_hw),
    }
    if context_diff is not None:
        result["decoder_context"] = {"max_abs_diff": context_diff,
                                     "tolerance": SAM_DECODER_CONTEXT.tolerances(decoder_low)}
    return result


#: Quantise the decoder's weights to 7 bits (see :func:`_quantize_int8`).
INT8_REDUCE_RANGE = True


def _quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation of ``src`` (weights int8, activations per call) into ``dst``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs advice about pre-processing
    try:
        # 7-bit weights: without VNNI (AVX2-only CPUs) ONNX Runtime's u8×s8 int8 products can saturate
        # (measured on an AVX2 EPYC: decoder logits off by 1.2, IoU predictions by 0.05, past the fp16
        # tolerances); with reduce_range (ONNX Runtime's advice for non-VNNI machines) the check passes there.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, reduce_range=INT8_REDUCE_RANGE)
    except Exception as exc:  # the quantiser raises assorted types
        raise ExportError(f"int8 quantisation of the decoder failed ({first_line(exc)})") from exc
    finally:
        logging.getLogger().setLevel(quiet)


def _mask_iou(a, b):
    """IoU of every mask of ``a`` (A×P) with every mask of ``b`` (B×P) → A×B (empty pairs: 0)."""
    import numpy as np

    fa, fb = a.astype(np.float32), b.astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)


def _precision_check(sam, folder: Path, reference_decoder: Path, precision: str, image_size: int) -> dict[str, Any]:
    """The low-precision decoder against the fp32 decoder (same weights, same context): logits, masks, time.

    A :data:`PRECISION_GRID`² grid of single foreground points on the validation image,
    every candidate kept (3 per prompt): the largest logit and IoU-prediction
    differences, the per-candidate mask IoU (same prompt, same output; masks
    thresholded at 0 on the valid low-resolution region) and the mean best IoU
    both ways, and the decoder's time per prompt (:data:`PRECISION_BATCH` prompts
    per call, CPU, this machine) for both.
    """
    import time

    import numpy as np
    import torch

    from .sam_graphs import synthetic_image

    height = round(image_size * VALIDATION_IMAGE_ASPECT)
    image = synthetic_image(image_size, height, image_size, VALIDATION_SEED)
    with torch.no_grad():
        embeddings = sam.image_encoder(torch.from_numpy(image)).numpy()
    ctx = cpu_session(folder / SAM_DECODER_CONTEXT.filename, "the SAM decoder context graph", mem_arena=False)
    context = ctx.run(None, {SAM_DECODER_CONTEXT.inputs[0]: embeddings})[0]
    prompt = prompt_frame_size(sam)
    valid_h = prompt * VALIDATION_IMAGE_ASPECT
    axis = (np.arange(PRECISION_GRID) + 0.5) / PRECISION_GRID
    xs, ys = np.meshgrid(axis * prompt, axis * valid_h)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)[:, None, :]
    labels = np.ones(coords.shape[:2], np.float32)
    outputs, seconds = {}, {}
    names = dict(zip(("context", "coords", "labels"), SAM_PROMPT_DECODER.inputs, strict=True))
    for key, path in (("fp32", reference_decoder), (precision, folder / SAM_PROMPT_DECODER.filename)):
        session = cpu_session(path, "the SAM decoder graph", mem_arena=False)
        masks, ious = [], []
        for start in range(0, len(coords), PRECISION_BATCH):
            feeds = {names["context"]: context, names["coords"]: coords[start:start + PRECISION_BATCH],
                     names["labels"]: labels[start:start + PRECISION_BATCH]}
            low, iou = session.run(None, feeds)
            masks.append(low)
            ious.append(iou)
        outputs[key] = (np.concatenate(masks), np.concatenate(ious))
        feeds = {names["context"]: context, names["coords"]: coords[:PRECISION_BATCH],
                 names["labels"]: labels[:PRECISION_BATCH]}
        best = float("inf")
        for _ in range(PRECISION_TIMED_RUNS):
            clock = time.perf_counter()
            session.run(None, feeds)
            best = min(best, time.perf_counter() - clock)
        seconds[key] = best / len(feeds[names["coords"]])
    (ref_masks, ref_iou), (low_masks, low_iou) = outputs["fp32"], outputs[precision]
    rows = int(np.ceil(ref_masks.shape[2] * VALIDATION_IMAGE_ASPECT))
    a = (ref_masks[:, :, :rows] > MASK_THRESHOLD).reshape(-1, rows * ref_masks.shape[3])
    b = (low_masks[:, :, :rows] > MASK_THRESHOLD).reshape(-1, rows * ref_masks.shape[3])
    inter = (a & b).sum(1)
    union = (a | b).sum(1)
    same = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    ne_a, ne_b = a[a.any(1)], b[b.any(1)]
    iou = _mask_iou(ne_a, ne_b)
    return {
        "precision": precision,
        "against": "the fp32 decoder of the same weights (ONNX Runtime, same image context)",
        "prompts": len(coords), "candidates": int(a.shape[0]),
        "max_abs_logit_diff": float(np.abs(ref_masks - low_masks).max()),
        "logit_range": [float(ref_masks.min()), float(ref_masks.max())],
        "max_abs_iou_prediction_diff": float(np.abs(ref_iou - low_iou).max()),
        "mask_iou_same_candidate": {"mean": float(same.mean()), "min": float(same.min())},
        "mean_best_iou_fp32_in_low": float(iou.max(1).mean()) if iou.size else float("nan"),
        "mean_best_iou_low_in_fp32": float(iou.max(0).mean()) if iou.size else float("nan"),
        "decoder_ms_per_prompt": {"fp32": 1e3 * seconds["fp32"], precision: 1e3 * seconds[precision],
                                  "batch": PRECISION_BATCH, "runtime": "onnxruntime CPU, at export"},
    }


def _sam_manifest(sam, model_type: str, files: dict[str, Any], opset: int, fp16: bool,
                  validation: dict[str, Any], source: dict[str, Any], decoder_graph: str,
                  context_width: int = 0) -> SamManifest:
    """The manifest of an exported SAM (shapes read off the model)."""
    image_size = int(sam.image_encoder.img_size)
    prompt_size = prompt_frame_size(sam)
    channels = int(sam.prompt_encoder.embed_dim)
    emb_h, emb_w = (int(v) for v in sam.prompt_encoder.image_embedding_size)
    low_res = (LOW_RES_FACTOR * emb_h, LOW_RES_FACTOR * emb_w)
    num_masks = int(sam.mask_decoder.num_multimask_outputs)
    embed_shape = [1, channels, emb_h, emb_w]
    encoder = SamEncoderSpec(
        input=SAM_ENCODER.inputs[0], output=SAM_ENCODER.outputs[0], input_size=image_size,
        pixel_mean=_pixel_stats(sam.pixel_mean), pixel_std=_pixel_stats(sam.pixel_std),
        normalize_in_graph=False,
        extra={
            "input_shape": [1, 3, image_size, image_size],
            "output_shape": embed_shape,
            "padding": PADDING_NOTE,
            "resize": "longest side to input_size, bilinear (segment_anything ResizeLongestSide)",
            "dtype": "float32",
        },
    )
    spec = SAM_PROMPT_DECODER if decoder_graph == "context" else SAM_DECODER
    embed_name, coords_name, labels_name = spec.inputs
    masks_name, iou_name = spec.outputs
    first_input_shape = embed_shape if decoder_graph != "context" else [1, emb_h * emb_w, context_width]
    decoder = SamDecoderSpec(
        inputs=spec.inputs, outputs=spec.outputs, low_res_size=low_res[0],
        mask_threshold=MASK_THRESHOLD,
        shapes={
            embed_name: first_input_shape,
            coords_name: ["batch", "points", 2],
            labels_name: ["batch", "points"],
            masks_name: ["batch", num_masks, low_res[0], low_res[1]],
            iou_name: ["batch", num_masks],
        },
        extra={
            "point_frame": f"x, y in the image resized to longest side {prompt_size} (the prompt frame)",
            "prompt_frame_size": prompt_size,
            "labels": {"foreground": 1, "background": 0, "padding": -1},
            "num_masks": num_masks,
            "dtype": "float32",
            "graph": decoder_graph,
        },
    )
    if decoder_graph == "context":
        # Folders without this key feed the image embeddings straight to decoder.onnx.
        decoder.extra["precompute"] = {
            "file": CONTEXT_ROLE, "input": SAM_DECODER_CONTEXT.inputs[0], "output": SAM_DECODER_CONTEXT.outputs[0],
            "input_shape": embed_shape, "output_shape": first_input_shape,
            "note": "run once per image on the encoder's output; feed its output to decoder.onnx",
        }
    extra: dict[str, Any] = {"architecture": _architecture_info(sam, image_size, channels)}
    if model_type in RECOMMENDED_SETTINGS:
        extra[RECOMMENDED_SETTINGS_KEY] = dict(RECOMMENDED_SETTINGS[model_type])
    return SamManifest(model_type=model_type, files=files, encoder=encoder, decoder=decoder, opset=opset,
                       precision="fp16" if fp16 else "fp32", validation=validation, source=source, extra=extra)


def export_sam_model(
    sam,
    out: str | os.PathLike,
    model_type: str,
    opset: int | None = None,
    fp16: bool = False,
    validate: bool = True,
    source: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    decoder_graph: str = DEFAULT_DECODER_GRAPH,
    decoder_precision: str = "fp32",
) -> dict[str, Any]:
    """Export a SAM ``nn.Module`` (any size) to a SAM model folder; the CLI path ends here.

    Parameters
    ----------
    sam : segment_anything Sam
        The model (fp32, eval mode).
    out : path-like
        Output folder: must not exist or be empty.
    model_type : str
        Label recorded in the manifest (``"vit_b"``...).
    opset : int, optional
        ONNX opset (default :data:`~eac.export.spec.DEFAULT_OPSET`; at least ``MIN_OPSET``).
    fp16 : bool
        fp16 graphs with LayerNorm and softmax in fp32.
    validate : bool
        Compare with PyTorch (strongly recommended).
    source : dict, optional
        Where the weights came from (recorded in the manifest).
    log : callable, optional
        Progress messages.
    decoder_graph : {"context", "factored", "batched"}
        Layout of the decoder (see :data:`DECODER_GRAPH_CHOICES`): ``"context"``
        writes ``decoder_context.onnx`` (the prompt-independent part, once per image)
        and a per-prompt ``decoder.onnx``; ``"factored"`` one graph with the same
        arithmetic; ``"batched"`` SAM's operation order (kept for comparisons).
    decoder_precision : {"fp32", "fp16", "int8"}
        The per-prompt decoder's precision (``"context"`` layout only; ``fp16=True``
        implies fp16). A lower precision is measured against the fp32 decoder of the
        same weights at export (logit and IoU-prediction differences, mask IoU on a
        grid of prompts with every candidate kept, time per prompt) and the numbers
        are recorded in the manifest's ``validation.decoder_precision``.

    Returns
    -------
    dict
        The manifest written to ``out/manifest.json``.

    Raises
    ------
    ExportError
        PyTorch missing, bad ``out`` or opset, or the export failed.
    ValidationError
        ONNX Runtime disagrees with PyTorch beyond the spec's tolerance.
    """
    require_torch("eac export sam")
    import torch

    from .sam_graphs import ContextPromptDecoder, DecoderContextGraph, decoder_module, encoder_module

    if decoder_graph not in DECODER_GRAPH_CHOICES:
        raise ExportError(f"unknown decoder graph {decoder_graph!r}; choose from {', '.join(DECODER_GRAPH_CHOICES)}")
    if decoder_precision not in DECODER_PRECISIONS:
        raise ExportError(f"unknown decoder precision {decoder_precision!r}; "
                          f"choose from {', '.join(DECODER_PRECISIONS)}")
    if fp16 and decoder_precision == "int8":
        raise ExportError("--fp16 and --decoder-precision int8 exclude each other; pick one for the decoder")
    if decoder_precision != "fp32" and decoder_graph != "context":
        raise ExportError(f"--decoder-precision {decoder_precision} needs the default decoder layout (context)")
    decoder_fp16 = fp16 or decoder_precision == "fp16"
    log = log or (lambda message: None)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old for SAM (LayerNormalization needs {MIN_OPSET}); "
                          f"use --opset {MIN_OPSET} or newer")
    staged = StagedFolder(out)
    with staged as tmp:
        sam = sam.float().eval()
        image_size = int(sam.image_encoder.img_size)
        channels = int(sam.prompt_encoder.embed_dim)
        emb_h, emb_w = (int(v) for v in sam.prompt_encoder.image_embedding_size)
        gen = torch.Generator().manual_seed(TRACE_SEED)

        log("exporting encoder")
        trace_image = torch.randn(1, 3, image_size, image_size, generator=gen)
        encoder_files = _export_graph(encoder_module(sam, fp16), (trace_image,), SAM_ENCODER, tmp, opset,
                                      fp16)

        log("exporting decoder")
        batch, points = TRACE_PROMPTS
        trace_embed = torch.randn(1, channels, emb_h, emb_w, generator=gen)
        trace_coords = torch.rand(batch, points, 2, generator=gen) * prompt_frame_size(sam)
        trace_labels = torch.ones(batch, points)
        files = file_entries(tmp, "encoder", encoder_files)
        context = None
        scratch = Path(tempfile.mkdtemp(prefix="fp32-decoder-", dir=tmp))
        if decoder_graph == "context":
            context = decoder_module(sam, decoder_fp16, "factored")
            context.matmul_add = decoder_precision == "int8"  # MatMul nodes, which the quantiser handles
            files.update(file_entries(tmp, CONTEXT_ROLE, _export_graph(
                DecoderContextGraph(context).eval(), (trace_embed,), SAM_DECODER_CONTEXT, tmp, opset, decoder_fp16)))
            with torch.no_grad():
                trace_context = context.image_context(trace_embed).float()
            trace = (trace_context, trace_coords, trace_labels)
            if decoder_precision == "fp32":
                decoder_files = _export_graph(ContextPromptDecoder(context).eval(), trace, SAM_PROMPT_DECODER, tmp,
                                              opset, decoder_fp16)
            else:
                # The fp32 per-prompt decoder, kept aside as the precision check's reference.
                _export_graph(ContextPromptDecoder(decoder_module(sam, False, "factored")).eval(), trace,
                              SAM_PROMPT_DECODER, scratch, opset, False)
                if decoder_precision == "int8":
                    log("quantising the decoder to int8")
                    matmuls = scratch / "matmul_add"
                    matmuls.mkdir()
                    _export_graph(ContextPromptDecoder(context).eval(), trace, SAM_PROMPT_DECODER, matmuls, opset,
                                  False)
                    _quantize_int8(matmuls / SAM_PROMPT_DECODER.filename, tmp / SAM_PROMPT_DECODER.filename)
                    decoder_files = [SAM_PROMPT_DECODER.filename]
                else:
                    decoder_files = _export_graph(ContextPromptDecoder(context).eval(), trace, SAM_PROMPT_DECODER,
                                                  tmp, opset, True)
        else:
            decoder_files = _export_graph(decoder_module(sam, fp16, decoder_graph),
                                          (trace_embed, trace_coords, trace_labels), SAM_DECODER, tmp, opset, fp16)
        files.update(file_entries(tmp, "decoder", decoder_files))

        if validate:
            try:
                validation = _validate(sam, tmp, fp16, (emb_h, emb_w), image_size, log, context,
                                       decoder_low=decoder_fp16 or decoder_precision == "int8")
            except ValidationError as exc:
                if decoder_precision == "fp32" or exc.output not in SAM_DECODER.outputs or exc.kind != "values":
                    raise
                # not an export fault: the quantised decoder's own error on this model's weights
                raise ValidationError(
                    f"{exc}: the {decoder_precision} decoder is too far from PyTorch on these weights (trained SAMs "
                    "have mask logits in the hundreds); --decoder-precision fp32 keeps the decoder exact, or "
                    "--skip-validation keeps this one and records its measured deviation from the fp32 decoder "
                    "in the manifest", output=exc.output, kind=exc.kind, max_abs_diff=exc.max_abs_diff,
                    index=exc.index, tolerance=exc.tolerance) from exc
        else:
            validation = {"skipped": True}
        if decoder_precision != "fp32":
            log(f"measuring the {decoder_precision} decoder against the fp32 decoder")
            validation["decoder_precision"] = _precision_check(sam, tmp, scratch / SAM_PROMPT_DECODER.filename,
                                                               decoder_precision, image_size)
        shutil.rmtree(scratch, ignore_errors=True)
        width = context.context_width if context is not None else 0
        manifest = _sam_manifest(sam, model_type, files, opset, fp16, validation, source or {}, decoder_graph,
                                 width)
        manifest.decoder.extra["precision"] = "fp16" if decoder_fp16 else decoder_precision
        manifest.write(tmp)
        staged.commit()
    return read_manifest(staged.out, SamManifest.kind)


def _download_with_progress(model_type: str) -> Path:
    """:func:`ensure_checkpoint` (or its EfficientViT-SAM twin) with a progress bar on stderr while it downloads."""
    from .efficientvit_sam import ensure_efficientvit_checkpoint, is_efficientvit

    ensure = ensure_efficientvit_checkpoint if is_efficientvit(model_type) else ensure_checkpoint
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a base dependency; without it the download is silent
        return ensure(model_type)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"SAM {model_type}", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        return ensure(model_type, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def export_sam(
    model_type: str,
    out: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    download: bool = False,
    opset: int | None = None,
    fp16: bool = False,
    validate: bool = True,
    log: Callable[[str], None] | None = None,
    decoder_precision: str = "fp32",
) -> dict[str, Any]:
    """``eac export sam``: load an official checkpoint of ``model_type`` and export it.

    Parameters
    ----------
    model_type : {"vit_b", "vit_l", "vit_h", "efficientvit_l0", "efficientvit_l1", "efficientvit_l2", \
"efficientvit_xl0", "efficientvit_xl1", "scene"}
        Architecture (see :data:`eac.export.sam_loader.SAM_ARCHITECTURES` and
        :data:`eac.export.efficientvit_sam.EFFICIENTVIT_ARCHITECTURES`).
    out : path-like
        Output folder (must not exist or be empty).
    checkpoint : path-like, optional
        The checkpoint file; exclusive with ``download``.
    download : bool
        Fetch the official checkpoint into the cache (``$EAC_CACHE``) or reuse it.
    opset, fp16, validate, decoder_precision
        See :func:`export_sam_model`.

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    CheckpointError
        Missing, truncated or wrong-type checkpoint; download impossible.
    ExportError, ValidationError
        See :func:`export_sam_model`.
    """
    require_torch("eac export sam")
    from .efficientvit_sam import (
        EFFICIENTVIT_CHECKPOINTS,
        efficientvit_architecture,
        is_efficientvit,
        load_efficientvit_sam,
    )

    efficientvit = is_efficientvit(model_type)
    arch = efficientvit_architecture(model_type) if efficientvit else architecture(model_type)  # unknown → one line
    # Refuse a bad --out before reading a multi-GB checkpoint.
    check_output_folder(out)
    if download and checkpoint:
        raise CheckpointError("give either --checkpoint or --download, not both")
    if download:
        path = _download_with_progress(model_type)
    elif checkpoint:
        path = Path(checkpoint).expanduser()
    else:
        raise CheckpointError(
            f"no checkpoint given for {model_type}; pass --checkpoint PATH or --download"
        )
    sam = load_efficientvit_sam(model_type, path) if efficientvit else load_sam(model_type, path)
    # the official release when --download fetched it (a --checkpoint file may be anyone's)
    official = (EFFICIENTVIT_CHECKPOINTS if efficientvit else OFFICIAL_CHECKPOINTS)[model_type] if download else None
    source = {"checkpoint": str(path), "checkpoint_bytes": path.stat().st_size, "architecture": arch.describe(),
              # a published hash was checked by the download: the file is not read again for it
              "checkpoint_sha256": official.sha256 if official and official.sha256 else file_sha256(path)}
    if official:
        source["official_url"] = official.url
    return export_sam_model(sam, out, model_type, opset=opset, fp16=fp16, validate=validate,
                            source=source, log=log, decoder_precision=decoder_precision)


__all__ = ["export_sam", "export_sam_model"]
