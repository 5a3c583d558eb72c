"""SAM concepts in ONNX Runtime: an automatic mask generator without torch.

:class:`SamConceptGenerator` runs a SAM model folder written by
``eac export sam`` (``encoder.onnx`` + batched ``decoder.onnx``) the way
segment-anything's ``SamAutomaticMaskGenerator`` does (EAC uses ``crop_n_layers=0``):

1. resize the image so its longest side is the encoder input size (1024),
   normalise with the manifest's pixel mean/std, zero-pad bottom/right, encode;
2. prompt the decoder with a ``points_per_side``² grid of single foreground
   points, ``points_per_batch`` prompts per call, 3 candidate masks each;
3. keep candidates with predicted IoU > ``pred_iou_thresh`` and stability
   score ≥ ``stability_score_thresh`` (offset ``stability_score_offset``);
4. box NMS at ``box_nms_thresh`` (scores: predicted IoU);
5. optionally fill holes / remove islands smaller than ``min_mask_region_area``
   and run NMS again, as the reference does;
6. optionally (``crop_n_layers`` > 0) repeat 1-4 on overlapping crops, drop
   masks touching an inner crop edge, and merge with NMS preferring small crops.

Where the reference upsamples every candidate to 1024×1024 and then to the
image size, this generator works at low resolution: stability scores are
computed on the 256×256 logits (their valid, unpadded part), and only the
candidates that pass the IoU and stability filters are resampled — once,
bilinearly, straight from the low-res logits — into the output frame (the
image SAM was given, e.g. a 224×224 classifier crop) and thresholded there.
Empty masks are dropped. Masks are returned as :class:`~eac.engine.concepts.Concepts`
ordered by predicted IoU (descending); zero masks is a valid result.

The generator holds sessions and settings only; calls share nothing mutable,
so one generator may be used from several threads at once.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from ..kernels import masks as mk
from .concepts import Concepts, Frame
from .errors import ConceptError, InputShapeError, ModelFolderError
from .manifest import model_path, read_manifest
from .session import SessionOptions, SessionRunner, TensorRTProfile, create_session

#: Label of a foreground point prompt.
FOREGROUND = 1.0
#: The reference generator applies the IoU / stability filters only above this value.
FILTER_DISABLED_AT = 0.0
SOURCE = "sam"
#: CPU memory arena of the SAM sessions (unless SessionOptions.cpu_mem_arena says otherwise): off, because
#: the arena keeps the encoder's peak and the decoder's peak side by side (ViT-B, 64 prompts per batch:
#: 7.2 GB peak RSS with it, 3.8 GB without, and the decoder was not slower).
SAM_MEM_ARENA = False


@dataclass(frozen=True)
class SamSettings:
    """Automatic mask generation settings (defaults: segment-anything's).

    Attributes
    ----------
    points_per_side : int
        Grid side; ``points_per_side``² single-point prompts.
    points_per_batch : int
        Prompts per decoder call (larger is allowed and usually faster on GPUs).
    pred_iou_thresh : float
        Keep candidates whose predicted IoU is greater (filter off when ≤ 0).
    stability_score_thresh : float
        Keep candidates whose stability score is at least this (off when ≤ 0).
    stability_score_offset : float
        Logit offset of the stability score.
    box_nms_thresh : float
        Box IoU above which the lower-scored candidate is dropped.
    min_mask_region_area : int
        Fill holes and remove islands smaller than this many output pixels (0: off).
    crop_n_layers : int
        Extra layers of crops (0: the image only, EAC's setting); layer i runs
        SAM on 2^i × 2^i overlapping crops and merges the masks.
    crop_nms_thresh : float
        Box IoU above which duplicates between crops are dropped (smaller crops win).
    crop_overlap_ratio : float
        Overlap of layer-1 crops as a fraction of the shorter image side.
    crop_n_points_downscale_factor : int
        Layer i uses ``points_per_side / factor**i`` points per side.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1

    def check(self) -> None:
        if self.points_per_side < 1:
            raise ConceptError(f"points_per_side must be at least 1, got {self.points_per_side}")
        if self.points_per_batch < 1:
            raise ConceptError(f"points_per_batch must be at least 1, got {self.points_per_batch}")
        if self.min_mask_region_area < 0:
            raise ConceptError(f"min_mask_region_area must be ≥ 0, got {self.min_mask_region_area}")
        if self.crop_n_layers < 0 or self.crop_n_points_downscale_factor < 1:
            raise ConceptError("crop_n_layers must be ≥ 0 and crop_n_points_downscale_factor ≥ 1")
        if not 0.0 <= self.crop_overlap_ratio < 1.0 or not 0.0 <= self.crop_nms_thresh <= 1.0:
            raise ConceptError("crop_overlap_ratio must lie in [0, 1) and crop_nms_thresh in [0, 1]")
        if not 0.0 <= self.box_nms_thresh <= 1.0:
            raise ConceptError(f"box_nms_thresh must lie in [0, 1], got {self.box_nms_thresh}")


class SamConceptGenerator:
    """Automatic SAM concepts from an exported SAM folder, with ONNX Runtime.

    Parameters
    ----------
    encoder, decoder : onnxruntime.InferenceSession
        Sessions of ``encoder.onnx`` and ``decoder.onnx``.
    manifest : dict
        The folder's manifest (input contract).
    **settings
        Fields of :class:`SamSettings`.
    """

    def __init__(self, encoder, decoder, manifest: dict[str, Any], **settings: Any):
        self.settings = SamSettings(**settings)
        self.settings.check()
        self.manifest = manifest
        try:
            enc = manifest["encoder"]
            dec = manifest["decoder"]
            self.input_size = int(enc["input_size"])
            self.pixel_mean = np.asarray(enc["pixel_mean"], np.float32).reshape(3)
            self.pixel_std = np.asarray(enc["pixel_std"], np.float32).reshape(3)
            normalize_in_graph = bool(enc.get("normalize_in_graph", False))
            self.mask_threshold = float(dec.get("mask_threshold", 0.0))
            self.low_res_size = int(dec["low_res_size"])
            self.encoder_input = enc["input"]
            self.encoder_output = enc["output"]
            self.decoder_inputs = list(dec["inputs"])
            self.decoder_outputs = list(dec["outputs"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFolderError(
                f"the SAM manifest is incomplete or malformed ({type(exc).__name__}: {exc}); re-run `eac export sam`"
            ) from exc
        if normalize_in_graph:
            raise ModelFolderError("this SAM folder normalises inside the graph, which this eac does not support; re-export it")
        self._encoder = SessionRunner(encoder)
        self._decoder = SessionRunner(decoder)
        self.provider = self._decoder.provider
        got = [i.name for i in decoder.get_inputs()]
        if got != self.decoder_inputs:
            raise ModelFolderError(f"decoder.onnx inputs are {got}, the manifest says {self.decoder_inputs}; re-run the export")

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, session_options: SessionOptions | None = None,
                    **settings: Any) -> SamConceptGenerator:
        """Open a folder written by ``eac export sam``.

        Parameters
        ----------
        folder : path-like
        session_options : SessionOptions, optional
            Providers and their options (``auto`` by default).
        **settings
            :class:`SamSettings` fields (``points_per_side``, ``points_per_batch``,
            ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``,
            ``min_mask_region_area``...).

        Raises
        ------
        ModelFolderError
            Not a SAM folder, missing or unloadable files.
        """
        manifest = read_manifest(folder, "sam")
        SamSettings(**settings).check()
        options = session_options or SessionOptions()
        encoder = create_session(model_path(folder, manifest, "encoder"), options, default_mem_arena=SAM_MEM_ARENA)
        batch = int(settings.get("points_per_batch", SamSettings.points_per_batch))
        emb = manifest["decoder"].get("shapes", {}).get("image_embeddings")
        profile = None
        if emb is not None:
            profile = TensorRTProfile(
                {"image_embeddings": tuple(emb), "point_coords": (None, 1, 2), "point_labels": (None, 1)},
                min_batch=1, opt_batch=batch, max_batch=max(batch, 1),
            )
        decoder = create_session(model_path(folder, manifest, "decoder"), options, trt_profile=profile,
                                 default_mem_arena=SAM_MEM_ARENA)
        return cls(encoder, decoder, manifest, **settings)

    # --- stages --------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """Resize (longest side = input size), normalise and pad an H×W×3 uint8 image.

        Returns
        -------
        tensor : ndarray of float32, 1×3×S×S
        resized_hw : (int, int)
            Size of the resized image inside the padded input.
        """
        h, w = image.shape[:2]
        new_h, new_w = mk.longest_side_shape(h, w, self.input_size)
        # Bilinear like SAM's ResizeLongestSide (PIL); area averaging when shrinking (PIL antialiases too).
        interpolation = cv2.INTER_LINEAR if max(h, w) <= self.input_size else cv2.INTER_AREA
        resized = image if (new_h, new_w) == (h, w) else cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        tensor = np.zeros((1, 3, self.input_size, self.input_size), np.float32)
        normalised = (resized.astype(np.float32) - self.pixel_mean) / self.pixel_std
        tensor[0, :, :new_h, :new_w] = normalised.transpose(2, 0, 1)
        return tensor, (new_h, new_w)

    def encode(self, tensor: np.ndarray) -> np.ndarray:
        """Image embeddings (1×C×h×w) of a preprocessed 1×3×S×S tensor."""
        return self._encoder.run({self.encoder_input: tensor}, [self.encoder_output])[0]

    def decode(self, embeddings: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the decoder on B single foreground points.

        Parameters
        ----------
        embeddings : ndarray of float32, 1×C×h×w
        coords : ndarray of float32, B×2
            (x, y) in the encoder input frame.

        Returns
        -------
        low_res : ndarray of float32, B×3×L×L
        iou : ndarray of float32, B×3
        """
        coords = np.ascontiguousarray(coords[:, None, :], dtype=np.float32)
        labels = np.full(coords.shape[:2], FOREGROUND, np.float32)
        feeds = dict(zip(self.decoder_inputs, (embeddings, coords, labels)))
        low_res, iou = self._decoder.run(feeds, self.decoder_outputs)
        return low_res, iou

    # --- the generator -------------------------------------------------------------------

    def generate(self, image: np.ndarray) -> Concepts:
        """Concepts of a whole image (identity frame)."""
        image = _check_image(image)
        return self(image, Frame.identity(image.shape[:2]))

    def __call__(self, crop: np.ndarray, frame: Frame) -> Concepts:
        """Run SAM on ``crop`` (the image the explanation lives in) and return its concepts.

        Parameters
        ----------
        crop : ndarray of uint8, h×w×3
            RGB image; SAM sees it resized so its longest side is the input size.
        frame : Frame
            Where ``crop`` sits in the original image (``frame.hw == (h, w)``).

        Returns
        -------
        Concepts
            N×h×w boolean masks, scores = predicted IoU (descending),
            ``timings`` {"preprocess", "encoder", "decoder", "postprocess"} in
            seconds and ``info`` (provider, settings, candidate counts).
        """
        crop = _check_image(crop)
        if tuple(frame.hw) != tuple(crop.shape[:2]):
            raise InputShapeError(f"the crop is {crop.shape[:2]} but its frame is {frame.hw}; pass the frame of this crop")
        s = self.settings
        h, w = crop.shape[:2]
        timings = {"preprocess": 0.0, "encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
        counts = {"candidates": 0, "after_filters": 0, "after_nms": 0}
        boxes, layers = mk.crop_boxes((h, w), s.crop_n_layers, s.crop_overlap_ratio)
        parts = [self._process_crop(crop, box, int(layer), timings, counts) for box, layer in zip(boxes, layers)]

        clock = time.perf_counter()
        masks = np.concatenate([p["masks"] for p in parts])
        iou = np.concatenate([p["iou"] for p in parts])
        stability = np.concatenate([p["stability"] for p in parts])
        points = np.concatenate([p["points"] for p in parts])
        crop_index = np.concatenate([np.full(len(p["iou"]), i) for i, p in enumerate(parts)]).astype(np.int64)
        if len(boxes) > 1 and len(masks):
            # Duplicates between crops: prefer masks from smaller crops (as the reference).
            crop_area = mk.box_area(boxes)[crop_index]
            keep = mk.nms(mk.masks_to_boxes(masks), 1.0 / crop_area, s.crop_nms_thresh)
            keep = keep[np.argsort(-iou[keep], kind="stable")]
            masks, iou, stability, points, crop_index = (
                masks[keep], iou[keep], stability[keep], points[keep], crop_index[keep])
        if s.min_mask_region_area > 0 and len(masks):
            masks, changed = mk.remove_small_regions(masks, s.min_mask_region_area)
            # As the reference: prefer unchanged masks, then remove new duplicates.
            keep = mk.nms(mk.masks_to_boxes(masks), (~changed).astype(np.float32),
                          max(s.box_nms_thresh, s.crop_nms_thresh))
            keep = keep[masks[keep].reshape(len(keep), -1).any(axis=1)]
            keep = keep[np.argsort(-iou[keep], kind="stable")]
            masks, iou, stability, points, crop_index = (
                masks[keep], iou[keep], stability[keep], points[keep], crop_index[keep])
        timings["postprocess"] += time.perf_counter() - clock

        info = {
            "provider": self.provider,
            "model_type": self.manifest.get("model_type"),
            "precision": self.manifest.get("precision"),
            "settings": asdict(s),
            **counts,
            "crops": boxes.tolist(),
            "crop_index": crop_index.tolist(),
            "stability_scores": stability.astype(float).tolist(),
            "point_coords": points.astype(float).tolist(),
        }
        return Concepts(masks=masks, scores=iou.astype(np.float32), source=SOURCE, frame=frame,
                        timings=timings, info=info)

    def _process_crop(self, image: np.ndarray, box: np.ndarray, layer: int, timings: dict[str, float],
                      counts: dict[str, int]) -> dict[str, np.ndarray]:
        """Masks of one crop box (the whole image for layer 0), in the image frame.

        Returns a dict of ``masks`` N×H×W bool, ``iou`` N, ``stability`` N and
        ``points`` N×2 (prompt of each mask, image frame), NMS-filtered within
        the crop and ordered by predicted IoU.
        """
        s = self.settings
        img_h, img_w = image.shape[:2]
        x0, y0, x1, y1 = (int(v) for v in box)
        sub = np.ascontiguousarray(image[y0:y1, x0:x1])
        h, w = sub.shape[:2]
        full = (x0, y0, x1, y1) == (0, 0, img_w, img_h)

        clock = time.perf_counter()
        tensor, resized_hw = self.preprocess(sub)
        timings["preprocess"] += time.perf_counter() - clock
        clock = time.perf_counter()
        embeddings = self.encode(tensor)
        timings["encoder"] += time.perf_counter() - clock

        scale = self.low_res_size / self.input_size
        valid_hw = (resized_hw[0] * scale, resized_hw[1] * scale)
        valid_rows, valid_cols = (min(self.low_res_size, math.ceil(v)) for v in valid_hw)
        per_side = int(s.points_per_side / (s.crop_n_points_downscale_factor**layer))
        grid = mk.point_grid(max(per_side, 1)) * np.array([w, h], np.float64)  # sub-image frame (x, y)
        prompts = (grid * np.array([resized_hw[1] / w, resized_hw[0] / h])).astype(np.float32)

        kept: dict[str, list[np.ndarray]] = {"masks": [], "iou": [], "stability": [], "points": []}
        for start in range(0, len(prompts), s.points_per_batch):
            batch = prompts[start:start + s.points_per_batch]
            clock = time.perf_counter()
            low_res, iou = self.decode(embeddings, batch)
            timings["decoder"] += time.perf_counter() - clock

            clock = time.perf_counter()
            n_masks = low_res.shape[1]
            logits = low_res.reshape(-1, low_res.shape[2], low_res.shape[3])
            scores = iou.reshape(-1)
            points = np.repeat(grid[start:start + len(batch)], n_masks, axis=0)
            counts["candidates"] += len(scores)
            keep = np.ones(len(scores), bool)
            if s.pred_iou_thresh > FILTER_DISABLED_AT:
                keep &= scores > s.pred_iou_thresh
            idx = np.flatnonzero(keep)
            stability = mk.stability_scores(logits[idx, :valid_rows, :valid_cols], self.mask_threshold,
                                            s.stability_score_offset)
            if s.stability_score_thresh > FILTER_DISABLED_AT:
                ok = stability >= s.stability_score_thresh
                idx, stability = idx[ok], stability[ok]
            if len(idx):
                masks = mk.logits_to_frame(logits[idx], (h, w), valid_hw) > self.mask_threshold
                ok = masks.reshape(len(idx), -1).any(axis=1)  # empty masks are no concepts
                if not full:
                    ok &= ~mk.boxes_near_crop_edge(mk.masks_to_boxes(masks), box, (img_h, img_w))
                kept["masks"].append(masks[ok])
                kept["iou"].append(scores[idx][ok])
                kept["stability"].append(stability[ok])
                kept["points"].append(points[idx][ok])
            timings["postprocess"] += time.perf_counter() - clock

        clock = time.perf_counter()
        masks = np.concatenate(kept["masks"]) if kept["masks"] else np.zeros((0, h, w), bool)
        iou = np.concatenate(kept["iou"]) if kept["iou"] else np.zeros(0, np.float32)
        stability = np.concatenate(kept["stability"]) if kept["stability"] else np.zeros(0, np.float32)
        points = np.concatenate(kept["points"]) if kept["points"] else np.zeros((0, 2))
        counts["after_filters"] += len(masks)
        keep = mk.nms(mk.masks_to_boxes(masks), iou, s.box_nms_thresh)
        counts["after_nms"] += len(keep)
        masks, iou, stability, points = masks[keep], iou[keep], stability[keep], points[keep]
        if not full:
            placed = np.zeros((len(masks), img_h, img_w), bool)
            placed[:, y0:y1, x0:x1] = masks
            masks = placed
            points = points + np.array([x0, y0], np.float64)
        timings["postprocess"] += time.perf_counter() - clock
        return {"masks": masks, "iou": iou, "stability": stability, "points": points}


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputShapeError(
            f"SAM needs an H×W×3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}; "
            "load it with eac.engine.images.load_image"
        )
    if min(image.shape[:2]) < 1:
        raise InputShapeError(f"empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


__all__ = ["SamConceptGenerator", "SamSettings"]
