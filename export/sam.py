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
:class:`BatchedPromptDecoder`, a module of its own around SAM's submodules: the
embedding stays batch 1 and broadcasts against the B prompts, so the
prompt-independent parts of the two-way transformer's first layer (the image
side's key/value and query projections) are computed once instead of B times,
and the graph is valid for every B.

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

import copy
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.manifest import file_entry, write_manifest
from ._torch_utils import fp32_norm_class
from .errors import ExportError
from .sam_loader import (
    SAM_ARCHITECTURES,
    architecture,
    ensure_checkpoint,
    load_sam,
    sam_modeling,
)
from .spec import DEFAULT_OPSET, MIN_OPSET, SAM_DECODER, SAM_ENCODER
from .validate import check_io_names, compare_outputs

#: A protobuf message cannot exceed 2 GiB; larger graphs keep weights outside.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
#: Headroom below the limit (graph structure, names) before external data is used.
PROTOBUF_MARGIN_BYTES = 64 * 2**20
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
#: Permissions of the finished model folder (mkdtemp creates 0o700).
FOLDER_MODE = 0o755
PADDING_NOTE = "zeros bottom-right after normalisation"


# --- modules that become the graphs --------------------------------------------------------

#: A normalisation module run in fp32 inside an fp16 model (shared with the classifier exporter).
Fp32Norm = fp32_norm_class()


def _half_with_fp32_norms(module):
    """A deep copy of ``module`` in fp16 whose LayerNorm / LayerNorm2d layers stay fp32."""
    norm_types: tuple[type, ...] = (torch.nn.LayerNorm, sam_modeling().LayerNorm2d)
    half = copy.deepcopy(module).half()

    def replace(parent):
        for name, child in list(parent.named_children()):
            if isinstance(child, norm_types) or type(child).__name__ == "LayerNorm2d":
                setattr(parent, name, Fp32Norm(child))
            else:
                replace(child)

    replace(half)
    return half


class SamEncoderGraph(torch.nn.Module):
    """``image`` (normalised, padded, fp32) → ``image_embeddings`` (fp32), computing in ``dtype``."""

    def __init__(self, encoder, dtype):
        super().__init__()
        self.encoder = encoder
        self.dtype = dtype

    def forward(self, image):
        return self.encoder(image.to(self.dtype)).float()


def _encoder_module(sam, fp16: bool) -> SamEncoderGraph:
    encoder = _half_with_fp32_norms(sam.image_encoder) if fp16 else sam.image_encoder
    return SamEncoderGraph(encoder, torch.float16 if fp16 else torch.float32).eval()


class BatchedPromptDecoder(torch.nn.Module):
    """Embeddings 1×C×h×w + B point-prompt sets → B×3 mask logits and B×3 IoUs.

    The prompt encoding (random-Fourier positional encoding plus label
    embeddings, with the padding point SAM adds when there is no box) runs in
    fp32; the transformer and mask head run in ``dtype``.
    """

    def __init__(self, sam, decoder, dtype):
        super().__init__()
        pe = sam.prompt_encoder
        self.dtype = dtype
        self.transformer = decoder.transformer
        self._init_upscaling(decoder.output_upscaling, dtype)
        self.hypernetworks = decoder.output_hypernetworks_mlps
        self.iou_head = decoder.iou_prediction_head
        self.num_mask_tokens = decoder.num_mask_tokens
        with torch.no_grad():
            tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
            self.register_buffer("output_tokens", tokens.float().clone())
            self.register_buffer("dense_pe", pe.get_dense_pe().float().clone())
            self.register_buffer("no_mask", pe.no_mask_embed.weight.float().reshape(1, -1, 1, 1).clone())
            self.register_buffer("gaussian", pe.pe_layer.positional_encoding_gaussian_matrix.float().clone())
            self.register_buffer("not_a_point", pe.not_a_point_embed.weight.float().clone())
            self.register_buffer("negative", pe.point_embeddings[0].weight.float().clone())
            self.register_buffer("positive", pe.point_embeddings[1].weight.float().clone())
            in_h, in_w = pe.input_image_size
            self.register_buffer("input_wh", torch.tensor([float(in_w), float(in_h)]))

    def embed_points(self, coords, labels):
        pad_coords = torch.zeros_like(coords[:, :1, :])
        pad_labels = -torch.ones_like(labels[:, :1])
        coords = torch.cat([coords + 0.5, pad_coords], dim=1)  # SAM shifts to pixel centres, not the pad
        labels = torch.cat([labels, pad_labels], dim=1).unsqueeze(-1)
        unit = 2.0 * (coords / self.input_wh) - 1.0
        angles = 2.0 * math.pi * (unit @ self.gaussian)
        encoding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        is_pad = (labels == -1.0).to(encoding.dtype)
        is_neg = (labels == 0.0).to(encoding.dtype)
        is_pos = (labels == 1.0).to(encoding.dtype)
        return (encoding * (1.0 - is_pad) + is_pad * self.not_a_point
                + is_neg * self.negative + is_pos * self.positive)

    def forward(self, image_embeddings, point_coords, point_labels):
        sparse = self.embed_points(point_coords, point_labels)
        batch = sparse.shape[0]
        tokens = torch.cat([self.output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        src = (image_embeddings + self.no_mask).to(self.dtype)  # batch 1: broadcast against B prompts
        channels, height, width = src.shape[1], src.shape[2], src.shape[3]
        hs, keys = self.transformer(src, self.dense_pe.to(self.dtype), tokens.to(self.dtype))
        # multimask output: mask tokens 1..3 (token 0 is the single-mask output)
        hyper = torch.stack(
            [self.hypernetworks[i](hs[:, 1 + i, :]) for i in range(1, self.num_mask_tokens)], dim=1
        )
        masks = self.upscale_and_project(keys.reshape(-1, height, width, channels), hyper)
        iou = self.iou_head(hs[:, 0, :])[:, 1:]
        return masks.float(), iou.float()

    def _init_upscaling(self, upscaling, dtype):
        """Keep SAM's output upscaling (ConvT 2×2/2 → LayerNorm2d → GELU → ConvT 2×2/2 → GELU) as matrices.

        A transposed convolution with kernel = stride = 2 maps each input pixel
        to a 2×2 output block independently: one matrix product per pixel,
        channels-last, followed by a depth-to-space reshuffle. It avoids
        ConvTranspose kernels (slow in ONNX Runtime's CPU provider) and makes
        LayerNorm2d a plain LayerNormalization over the last axis.
        """
        conv1, norm, act1, conv2, act2 = list(upscaling)
        norm = getattr(norm, "inner", norm)
        with torch.no_grad():
            for index, conv in ((1, conv1), (2, conv2)):
                c_in, c_out = conv.weight.shape[0], conv.weight.shape[1]
                # (C_in, C_out, 2, 2) → (C_in, 2·2·C_out) ordered (dy, dx, c_out)
                weight = conv.weight.detach().permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)
                self.register_buffer(f"up{index}_weight", weight.to(dtype).clone())
                self.register_buffer(f"up{index}_bias", conv.bias.detach().repeat(4).to(dtype).clone())
            self.register_buffer("up_norm_weight", norm.weight.detach().float().clone())
            self.register_buffer("up_norm_bias", norm.bias.detach().float().clone())
        self.up_norm_eps = float(norm.eps)
        self.up_act1, self.up_act2 = act1, act2
        self.up_channels = (int(conv1.weight.shape[1]), int(conv2.weight.shape[1]))

    def upscale_and_project(self, grid, hyper):
        """B×h×w×C keys and B×K×C' hypernetwork outputs → B×K×4h×4w mask logits.

        Everything between the two transposed convolutions is per output
        pixel (LayerNorm over channels, GELU), so it runs on the blocked
        layout B×h×w×(2·2)×c; the pixels are put in raster order once, on
        the K-channel result.
        """
        c1, c2 = self.up_channels
        h, w = grid.shape[1], grid.shape[2]
        x = (grid @ self.up1_weight + self.up1_bias).reshape(-1, h, w, 4, c1)  # blocks (dy, dx)
        x = torch.nn.functional.layer_norm(x.float(), (c1,), self.up_norm_weight, self.up_norm_bias,
                                           self.up_norm_eps).to(self.dtype)
        x = self.up_act1(x)
        x = self.up_act2(x @ self.up2_weight + self.up2_bias)  # B×h×w×4×(2·2·c2): blocks of blocks
        k = hyper.shape[1]
        masks = x.reshape(-1, h * w * 16, c2) @ hyper.transpose(1, 2)  # B×(h·w·16)×K
        # (i, j, dy, dx, dy', dx', k) → row 4i + 2dy + dy', column 4j + 2dx + dx'
        masks = masks.reshape(-1, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(-1, k, 4 * h, 4 * w)


def _decoder_module(sam, fp16: bool) -> BatchedPromptDecoder:
    if fp16:
        decoder = _half_with_fp32_norms(sam.mask_decoder)
        dtype = torch.float16
    else:
        decoder, dtype = sam.mask_decoder, torch.float32
    return BatchedPromptDecoder(sam, decoder, dtype).eval()


def reference_decoder(sam, embeddings, coords, labels):
    """PyTorch reference: ``SamPredictor.predict_torch(..., multimask_output=True)`` without boxes/masks.

    Parameters
    ----------
    sam : segment_anything Sam
    embeddings : Tensor, 1×C×h×w
    coords : Tensor, B×P×2 (x, y in the encoder input frame)
    labels : Tensor, B×P

    Returns
    -------
    (Tensor B×3×4h×4w, Tensor B×3)
        Low-resolution mask logits and predicted IoUs.
    """
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(coords, labels.int()), boxes=None, masks=None)
        return sam.mask_decoder(
            image_embeddings=embeddings,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )


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


def _save_onnx(model, folder: Path, filename: str) -> list[str]:
    """Save ``model`` as ``folder/filename``; weights go to ``filename.data`` above the 2 GB limit.

    Returns the file names written (the graph first).
    """
    import onnx

    path = folder / filename
    if model.ByteSize() < PROTOBUF_LIMIT_BYTES - PROTOBUF_MARGIN_BYTES:
        onnx.save_model(model, str(path))
        return [filename]
    data_name = filename + ".data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return [filename, data_name]


def _export_graph(module, args: tuple, spec, folder: Path, opset: int, fp16: bool) -> list[str]:
    """Trace ``module`` with the legacy exporter, post-process, save; returns file names."""
    import onnx

    scratch = Path(tempfile.mkdtemp(prefix="trace-", dir=folder))
    try:
        traced = scratch / spec.filename
        with torch.no_grad(), warnings.catch_warnings():
            # segment-anything's encoder turns shapes into Python numbers: fine for a fixed input size
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                module, args, str(traced),
                input_names=list(spec.inputs), output_names=list(spec.outputs),
                dynamic_axes={k: dict(v) for k, v in spec.dynamic_axes.items()} or None,
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        model = onnx.load(str(traced))  # also reads external data the exporter may have written
        if fp16:
            _wrap_softmax_fp32(model)
        model.producer_name = "eac"
        return _save_onnx(model, folder, spec.filename)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- synthetic inputs ----------------------------------------------------------------------

def synthetic_image(size: int, height: int, width: int, seed: int) -> np.ndarray:
    """A smooth, photo-like 0-255 RGB image of height×width, normalised and padded to size×size.

    Returns
    -------
    ndarray of float32, 1×3×size×size
        SAM's encoder input (pixel mean/std of the official models applied).
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=gen) * 255.0
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    image = (image + torch.randn(1, 3, height, width, generator=gen) * 8.0).clamp(0.0, 255.0)
    arch = SAM_ARCHITECTURES["vit_b"]
    mean = torch.tensor(arch.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(arch.pixel_std).view(1, 3, 1, 1)
    normalised = (image - mean) / std
    padded = torch.zeros(1, 3, size, size)
    padded[:, :, :height, :width] = normalised
    return padded.numpy().astype(np.float32)


def synthetic_prompts(batch: int, points: int, size: int, seed: int, mixed_labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Random point prompts: coords B×P×2 in [0, size), labels B×P (1, or 1/0/-1 when mixed)."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0.0, size, size=(batch, points, 2)).astype(np.float32)
    if mixed_labels:
        labels = rng.choice(np.array([1.0, 0.0, -1.0], np.float32), size=(batch, points))
        labels[:, 0] = 1.0
    else:
        labels = np.ones((batch, points), np.float32)
    return coords, labels


# --- export --------------------------------------------------------------------------------

def _prepare_out(out: str | os.PathLike) -> tuple[Path, Path]:
    """Check ``out`` and create the hidden sibling folder the export is written into."""
    out = Path(out).expanduser()
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out}: exists and is not a folder; choose another --out")
        if any(out.iterdir()):
            raise ExportError(f"{out}: folder is not empty; choose a new --out folder or empty this one")
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
        tmp.chmod(FOLDER_MODE)  # mkdtemp makes it private; the finished folder is an ordinary one
    except OSError as exc:
        raise ExportError(f"{out}: cannot write there ({exc.strerror or exc}); choose a writable --out") from exc
    return out, tmp


def _finish_out(tmp: Path, out: Path) -> None:
    try:
        if out.exists():
            out.rmdir()  # empty (checked before the export)
        os.replace(tmp, out)
    except OSError as exc:
        raise ExportError(f"{out}: cannot move the finished export into place ({exc.strerror or exc})") from exc


def _validate(sam, folder: Path, fp16: bool, embedding_hw: tuple[int, int], image_size: int,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Compare ONNX Runtime with fp32 PyTorch on fresh inputs; raises ValidationError."""
    from ..engine.session import SessionOptions, create_session

    options = SessionOptions(providers=["cpu"])
    height = round(image_size * VALIDATION_IMAGE_ASPECT)
    image = synthetic_image(image_size, height, image_size, VALIDATION_SEED)
    log("validating encoder")
    encoder = create_session(folder / SAM_ENCODER.filename, options)
    check_io_names(encoder, SAM_ENCODER.inputs, SAM_ENCODER.outputs, "SAM encoder")
    with torch.no_grad():
        ref_embed = sam.image_encoder(torch.from_numpy(image))
    got_embed = encoder.run(None, {SAM_ENCODER.inputs[0]: image})[0]
    enc_name = SAM_ENCODER.outputs[0]
    encoder_diff = compare_outputs({enc_name: ref_embed.numpy()}, {enc_name: got_embed},
                                   SAM_ENCODER.tolerances(fp16), "SAM encoder")
    del encoder

    log("validating decoder")
    decoder = create_session(folder / SAM_DECODER.filename, options)
    check_io_names(decoder, SAM_DECODER.inputs, SAM_DECODER.outputs, "SAM decoder")
    embeddings = ref_embed.numpy().astype(np.float32)
    decoder_diff = {name: 0.0 for name in SAM_DECODER.outputs}
    cases = []
    for case, (batch, points) in enumerate(VALIDATION_PROMPTS):
        coords, labels = synthetic_prompts(batch, points, image_size, VALIDATION_SEED + case, mixed_labels=points > 1)
        ref_masks, ref_iou = reference_decoder(sam, ref_embed, torch.from_numpy(coords), torch.from_numpy(labels))
        got = decoder.run(None, {"image_embeddings": embeddings, "point_coords": coords, "point_labels": labels})
        diff = compare_outputs(
            {"low_res_masks": ref_masks.numpy(), "iou_predictions": ref_iou.numpy()},
            dict(zip(SAM_DECODER.outputs, got)),
            SAM_DECODER.tolerances(fp16), f"SAM decoder (B={batch}, P={points})",
        )
        cases.append({"batch": batch, "points": points, "max_abs_diff": diff})
        decoder_diff = {k: max(decoder_diff[k], diff[k]) for k in decoder_diff}
    return {
        "reference": "PyTorch fp32 (segment_anything modeling modules)",
        "runtime": "onnxruntime CPUExecutionProvider",
        "encoder": {"max_abs_diff": encoder_diff, "tolerance": SAM_ENCODER.tolerances(fp16),
                    "input": f"synthetic {height}x{image_size} image, padded, seed {VALIDATION_SEED}"},
        "decoder": {"max_abs_diff": decoder_diff, "tolerance": SAM_DECODER.tolerances(fp16), "cases": cases},
        "embedding_hw": list(embedding_hw),
    }


def export_sam_model(
    sam,
    out: str | os.PathLike,
    model_type: str,
    opset: int | None = None,
    fp16: bool = False,
    validate: bool = True,
    source: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
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

    Returns
    -------
    dict
        The manifest written to ``out/manifest.json``.

    Raises
    ------
    ExportError
        Bad ``out`` or opset, or the export failed.
    ValidationError
        ONNX Runtime disagrees with PyTorch beyond the spec's tolerance.
    """
    log = log or (lambda message: None)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old for SAM (LayerNormalization needs {MIN_OPSET}); use --opset {MIN_OPSET} or newer")
    out, tmp = _prepare_out(out)
    try:
        sam = sam.float().eval()
        image_size = int(sam.image_encoder.img_size)
        channels = int(sam.prompt_encoder.embed_dim)
        emb_h, emb_w = (int(v) for v in sam.prompt_encoder.image_embedding_size)
        low_res = (LOW_RES_FACTOR * emb_h, LOW_RES_FACTOR * emb_w)
        num_masks = int(sam.mask_decoder.num_multimask_outputs)
        gen = torch.Generator().manual_seed(TRACE_SEED)

        log("exporting encoder")
        trace_image = torch.randn(1, 3, image_size, image_size, generator=gen)
        encoder_files = _export_graph(_encoder_module(sam, fp16), (trace_image,), SAM_ENCODER, tmp, opset, fp16)

        log("exporting decoder")
        batch, points = TRACE_PROMPTS
        trace_embed = torch.randn(1, channels, emb_h, emb_w, generator=gen)
        trace_coords = torch.rand(batch, points, 2, generator=gen) * image_size
        trace_labels = torch.ones(batch, points)
        decoder_files = _export_graph(_decoder_module(sam, fp16), (trace_embed, trace_coords, trace_labels),
                                      SAM_DECODER, tmp, opset, fp16)

        validation = (_validate(sam, tmp, fp16, (emb_h, emb_w), image_size, log) if validate
                      else {"skipped": True})

        files = {"encoder": file_entry(tmp, encoder_files[0]), "decoder": file_entry(tmp, decoder_files[0])}
        if len(encoder_files) > 1:
            files["encoder_data"] = file_entry(tmp, encoder_files[1])
        if len(decoder_files) > 1:
            files["decoder_data"] = file_entry(tmp, decoder_files[1])
        arch = sam.image_encoder
        manifest = {
            "kind": "sam",
            "model_type": model_type,
            "opset": opset,
            "precision": "fp16" if fp16 else "fp32",
            "files": files,
            "encoder": {
                "input": SAM_ENCODER.inputs[0],
                "output": SAM_ENCODER.outputs[0],
                "input_size": image_size,
                "input_shape": [1, 3, image_size, image_size],
                "output_shape": [1, channels, emb_h, emb_w],
                "pixel_mean": [float(v) for v in sam.pixel_mean.flatten()],
                "pixel_std": [float(v) for v in sam.pixel_std.flatten()],
                "normalize_in_graph": False,
                "padding": PADDING_NOTE,
                "resize": "longest side to input_size, bilinear (segment_anything ResizeLongestSide)",
                "dtype": "float32",
            },
            "decoder": {
                "inputs": list(SAM_DECODER.inputs),
                "outputs": list(SAM_DECODER.outputs),
                "shapes": {
                    "image_embeddings": [1, channels, emb_h, emb_w],
                    "point_coords": ["batch", "points", 2],
                    "point_labels": ["batch", "points"],
                    "low_res_masks": ["batch", num_masks, low_res[0], low_res[1]],
                    "iou_predictions": ["batch", num_masks],
                },
                "point_frame": f"x, y in the {image_size}x{image_size} encoder input frame",
                "labels": {"foreground": 1, "background": 0, "padding": -1},
                "mask_threshold": MASK_THRESHOLD,
                "low_res_size": low_res[0],
                "num_masks": num_masks,
                "dtype": "float32",
            },
            "architecture": {
                "encoder_embed_dim": int(arch.patch_embed.proj.out_channels),
                "encoder_depth": len(arch.blocks),
                "prompt_embed_dim": channels,
                "image_size": image_size,
            },
            "validation": validation,
            "source": source or {},
        }
        write_manifest(tmp, manifest)
        _finish_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from ..engine.manifest import read_manifest

    return read_manifest(out, "sam")


def _download_with_progress(model_type: str) -> Path:
    """:func:`ensure_checkpoint` with a progress bar on stderr while it downloads."""
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a base dependency; without it the download is silent
        return ensure_checkpoint(model_type)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"SAM {model_type}", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        return ensure_checkpoint(model_type, progress=progress)
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
) -> dict[str, Any]:
    """``eac export sam``: load an official checkpoint of ``model_type`` and export it.

    Parameters
    ----------
    model_type : {"vit_b", "vit_l", "vit_h"}
        Architecture (see :data:`eac.export.sam_loader.SAM_ARCHITECTURES`).
    out : path-like
        Output folder (must not exist or be empty).
    checkpoint : path-like, optional
        The checkpoint file; exclusive with ``download``.
    download : bool
        Fetch the official checkpoint into the cache (``$EAC_CACHE``) or reuse it.
    opset, fp16, validate
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
    from .errors import CheckpointError

    architecture(model_type)  # unknown type → one-line error before anything else
    # Refuse a bad --out before reading a multi-GB checkpoint.
    probe_out = Path(out).expanduser()
    if probe_out.exists() and (not probe_out.is_dir() or any(probe_out.iterdir())):
        _prepare_out(probe_out)  # raises the one-line error
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
    sam = load_sam(model_type, path)
    source = {"checkpoint": str(path), "checkpoint_bytes": path.stat().st_size,
              "architecture": architecture(model_type).describe()}
    return export_sam_model(sam, out, model_type, opset=opset, fp16=fp16, validate=validate,
                            source=source, log=log)


__all__ = ["BatchedPromptDecoder", "SamEncoderGraph", "export_sam", "export_sam_model", "reference_decoder"]
