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

Step 2 decodes every grid point (``prompt_schedule="grid"``, the reference). With
``prompt_schedule="coarse-to-fine"`` the same grid is decoded in levels (every 4th
row and column, then every 2nd, then the rest; :mod:`eac.kernels.prompts`) and a
point of a later level is skipped when it lies inside a mask already kept with
predicted IoU ≥ ``skip_iou_thresh`` (eroded by :data:`SKIP_EROSION_PX`): such
points mostly give copies of that mask, which NMS would remove.

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..kernels import masks as mk
from ..kernels import prompts as pr
from ..kernels.masks import MaskData
from .concepts import Concepts, Frame
from .errors import ConceptError, InputShapeError, ModelFolderError
from .images import resize_image
from .manifest import MANIFEST_NAME, RECOMMENDED_SETTINGS_KEY, SamManifest, model_path, verify_files
from .session import Runtime, SessionOptions, TensorRTProfile

#: Label of a foreground point prompt.
FOREGROUND = 1.0
#: The reference generator applies the IoU / stability filters only above this value.
FILTER_DISABLED_AT = 0.0
SOURCE = "sam"
#: Manifest ``decoder`` keys: the prompt frame's side, and the image-context graph run once per image.
PROMPT_FRAME_KEY = "prompt_frame_size"
PRECOMPUTE_KEY = "precompute"
#: CPU memory arena of the SAM sessions (unless SessionOptions.cpu_mem_arena says otherwise): off, because
#: the arena keeps the encoder's peak and the decoder's peak side by side (ViT-B, 64 prompts per batch:
#: 7.2 GB peak RSS with it, 3.8 GB without, and the decoder was not slower).
SAM_MEM_ARENA = False
#: The prompt decoder's session of a folder with a context graph keeps ONNX Runtime's CPU arena: on the CPU it
#: runs :data:`CPU_DECODER_BATCH` prompts per call, so the arena holds about 0.2 GB and saves the page faults
#: of fresh allocations (one-graph folders keep :data:`SAM_MEM_ARENA` and full batches).
DECODER_MEM_ARENA = True
#: Prompts per decoder call on the CPU provider (``points_per_batch`` elsewhere). SAM ViT-B decoder, 2-core
#: EPYC, quiet machine, ms per prompt (peak RSS rise): 64 per call without arena 15.7 (+1.1 GB), 64 with arena
#: 11.0 (+3.3 GB), 4 with arena 11.1 (+0.2 GB), 2 with arena 10.5 (+0.1 GB). Results are per prompt, so the
#: split changes nothing but speed and memory.
CPU_DECODER_BATCH = 4
CPU_PROVIDER = "CPUExecutionProvider"
#: ``prompt_schedule="coarse-to-fine"``: a kept mask covers a grid point only this many output pixels inside
#: its edge (a point on the boundary between two regions is still decoded).
SKIP_EROSION_PX = 1
#: Candidates upsampled to full-frame masks at a time in post-processing (bounds its memory on large photos).
MASK_CHUNK = 8


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
    decoder_batch : int or None
        Prompts per ONNX Runtime decoder call (None: :data:`CPU_DECODER_BATCH` on the CPU
        provider, ``points_per_batch`` on others). Changes speed and memory only.
    prompt_schedule : {"grid", "coarse-to-fine"}
        ``"grid"`` decodes every grid point (segment-anything's generator);
        ``"coarse-to-fine"`` decodes the grid in levels and skips points inside masks
        already kept with predicted IoU ≥ ``skip_iou_thresh`` (fewer decoder runs).
    skip_iou_thresh : float
        Predicted IoU a kept mask needs to make the points inside it redundant
        (``"coarse-to-fine"`` only).
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
    decoder_batch: int | None = None
    prompt_schedule: str = "grid"
    skip_iou_thresh: float = pr.DEFAULT_SKIP_IOU

    def check(self) -> None:
        if self.prompt_schedule not in pr.PROMPT_SCHEDULES:
            raise ConceptError(f"unknown prompt schedule {self.prompt_schedule!r}; "
                               f"choose one of {', '.join(pr.PROMPT_SCHEDULES)}")
        if not 0.0 <= self.skip_iou_thresh <= 1.0:
            raise ConceptError(f"skip_iou_thresh must lie in [0, 1], got {self.skip_iou_thresh}")
        if self.points_per_side < 1:
            raise ConceptError(f"points_per_side must be at least 1, got {self.points_per_side}")
        if self.points_per_batch < 1:
            raise ConceptError(f"points_per_batch must be at least 1, got {self.points_per_batch}")
        if self.decoder_batch is not None and self.decoder_batch < 1:
            raise ConceptError(f"decoder_batch must be at least 1 or None, got {self.decoder_batch}")
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

    Create with :meth:`from_folder`.

    Parameters
    ----------
    encoder, decoder : onnxruntime.InferenceSession
        Sessions of ``encoder.onnx`` and ``decoder.onnx``.
    manifest : SamManifest
        The folder's manifest (input contract).
    runtime : Runtime, optional
        The device the sessions run on.
    **settings
        Fields of :class:`SamSettings`.
    """

    def __init__(self, encoder, decoder, manifest: SamManifest, runtime: Runtime | None = None,
                 context=None, **settings: Any):
        self.settings = SamSettings(**settings)
        self.settings.check()
        self.manifest = manifest
        self.runtime = Runtime.from_options(runtime)
        enc, dec = manifest.encoder, manifest.decoder
        if enc.normalize_in_graph:
            raise ModelFolderError("this SAM folder normalises inside the graph, which this eac does not support; "
                                   "re-export it")
        self.input_size = enc.input_size
        # Point prompts and the low-res masks live in the prompt encoder's frame: the encoder input for SAM,
        # 1024 for EfficientViT-SAM-L (512 input). Folders without the key predate it: the encoder input.
        self.prompt_size = int(dec.extra.get(PROMPT_FRAME_KEY, enc.input_size))
        self.pixel_mean = np.asarray(enc.pixel_mean, np.float32)
        self.pixel_std = np.asarray(enc.pixel_std, np.float32)
        self.mask_threshold = dec.mask_threshold
        self.low_res_size = dec.low_res_size
        self.encoder_input = enc.input
        self.encoder_output = enc.output
        self.decoder_inputs = list(dec.inputs)
        self.decoder_outputs = list(dec.outputs)
        self._encoder = self.runtime.runner(encoder)
        self._decoder = self.runtime.runner(decoder)
        precompute = dec.extra.get(PRECOMPUTE_KEY)
        if precompute and context is None:
            raise ModelFolderError("this SAM folder's decoder needs its image-context graph "
                                   f"({precompute.get('file')}); open it with SamConceptGenerator.from_folder")
        self._context = self.runtime.runner(context) if precompute else None
        self.context_input = precompute.get("input") if precompute else None
        self.context_output = precompute.get("output") if precompute else None
        self.provider = self._decoder.provider
        if self.settings.decoder_batch is not None:
            self.decoder_batch = self.settings.decoder_batch
        else:
            # Small calls pay off only when the per-image part of the decoder is precomputed (folders with a
            # context graph); one-graph folders redo it on every call.
            small = self.provider == CPU_PROVIDER and self._context is not None
            self.decoder_batch = CPU_DECODER_BATCH if small else self.settings.points_per_batch
        got = [i.name for i in decoder.get_inputs()]
        if got != self.decoder_inputs:
            raise ModelFolderError(f"decoder.onnx inputs are {got}, the manifest says {self.decoder_inputs}; "
                                   "re-run the export")
        _check_sizes(manifest, encoder, decoder)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, session_options: Runtime | SessionOptions | None = None,
                    verify: bool = True, **settings: Any) -> SamConceptGenerator:
        """Open a folder written by ``eac export sam``.

        Parameters
        ----------
        folder : path-like
            Written by ``eac export sam``; or the name of a shipped SAM (``"demo"``
            exactly; a folder of that name is ``"./demo"``), as on the command line.
        session_options : Runtime or SessionOptions, optional
            Providers and their options (``auto`` by default).
        verify : bool
            Check the files against the manifest's checksums (cached by size and
            modification time, so a multi-GB encoder is hashed once).
        **settings
            :class:`SamSettings` fields (``points_per_side``, ``points_per_batch``,
            ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``,
            ``min_mask_region_area``...). A setting not given here takes the value the folder's
            manifest recommends (``recommended_settings``, measured on that model: the shipped scene SAM
            decodes ``prompt_schedule="coarse-to-fine"``), else the :class:`SamSettings` default.

        Raises
        ------
        ModelFolderError
            Not a SAM folder, missing, damaged or unloadable files.
        """
        from .shipped import resolve_model_folder

        folder = resolve_model_folder("sam", folder)
        manifest = SamManifest.read(folder)
        recommended = manifest.recommended_settings
        where = f"{Path(folder) / MANIFEST_NAME}: {RECOMMENDED_SETTINGS_KEY}"
        unknown = sorted(set(recommended) - {f.name for f in fields(SamSettings)})
        if unknown:
            raise ModelFolderError(f"{where} names unknown generator settings ({', '.join(unknown)}); "
                                   "re-run `eac export sam`")
        try:
            SamSettings(**recommended).check()
        except ConceptError as exc:
            raise ModelFolderError(f"{where}: {exc}; re-run `eac export sam`") from exc
        settings = {**recommended, **settings}
        SamSettings(**settings).check()
        if verify:
            verify_files(folder, manifest)
        runtime = Runtime.from_options(session_options)
        encoder = runtime.session(model_path(folder, manifest, "encoder"), default_mem_arena=SAM_MEM_ARENA)
        batch = int(settings.get("points_per_batch", SamSettings.points_per_batch))
        first, coords_name, labels_name = manifest.decoder.inputs
        first_shape = manifest.decoder.shapes.get(first)
        profile = None
        if first_shape is not None:
            profile = TensorRTProfile(
                {first: tuple(first_shape), coords_name: (None, 1, 2), labels_name: (None, 1)},
                min_batch=1, opt_batch=batch, max_batch=max(batch, 1),
            )
        precompute = manifest.decoder.extra.get(PRECOMPUTE_KEY)
        # The arena only with small calls (folders with a context graph): with 64 prompts per call it holds ~3 GB.
        decoder = runtime.session(model_path(folder, manifest, "decoder"), trt_profile=profile,
                                  default_mem_arena=DECODER_MEM_ARENA if precompute else SAM_MEM_ARENA)
        context = None
        if precompute:
            context = runtime.session(model_path(folder, manifest, str(precompute.get("file"))),
                                      default_mem_arena=SAM_MEM_ARENA)
        return cls(encoder, decoder, manifest, runtime, context=context, **settings)

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
        resized = resize_image(image, (new_h, new_w))
        tensor = np.zeros((1, 3, self.input_size, self.input_size), np.float32)
        normalised = (resized.astype(np.float32) - self.pixel_mean) / self.pixel_std
        tensor[0, :, :new_h, :new_w] = normalised.transpose(2, 0, 1)
        return tensor, (new_h, new_w)

    def encode(self, tensor: np.ndarray) -> np.ndarray:
        """Image embeddings (1×C×h×w) of a preprocessed 1×3×S×S tensor."""
        return self._encoder.run({self.encoder_input: tensor}, [self.encoder_output])[0]

    def image_context(self, embeddings: np.ndarray) -> np.ndarray:
        """What the decoder takes per image: the embeddings, or (folders with a precompute graph) their context.

        Parameters
        ----------
        embeddings : ndarray of float32, 1×C×h×w

        Returns
        -------
        ndarray of float32
            ``embeddings`` unchanged, or the 1×N×W image context (once per image).
        """
        if self._context is None:
            return embeddings
        return self._context.run({self.context_input: embeddings}, [self.context_output])[0]

    def decode(self, embeddings: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the decoder on B single foreground points.

        Parameters
        ----------
        embeddings : ndarray of float32
            :meth:`image_context` of the image (1×C×h×w embeddings, or 1×N×W context).
        coords : ndarray of float32, B×2
            (x, y) in the prompt frame (``prompt_size``).

        Returns
        -------
        low_res : ndarray of float32, B×3×L×L
        iou : ndarray of float32, B×3
        """
        coords = np.ascontiguousarray(coords[:, None, :], dtype=np.float32)
        labels = np.full(coords.shape[:2], FOREGROUND, np.float32)
        parts = []
        for start in range(0, len(coords), self.decoder_batch):
            stop = start + self.decoder_batch
            feeds = dict(zip(self.decoder_inputs, (embeddings, coords[start:stop], labels[start:stop]), strict=True))
            parts.append(self._decoder.run(feeds, self.decoder_outputs))
        if len(parts) == 1:
            return parts[0][0], parts[0][1]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

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
            raise InputShapeError(f"the crop is {crop.shape[:2]} but its frame is {frame.hw}; "
                                  "pass the frame of this crop")
        s = self.settings
        h, w = crop.shape[:2]
        timings = {"preprocess": 0.0, "encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
        counts = {"candidates": 0, "after_filters": 0, "after_nms": 0, "prompts": 0, "prompts_skipped": 0}
        boxes, layers = mk.crop_boxes((h, w), s.crop_n_layers, s.crop_overlap_ratio)
        parts = [self._process_crop(crop, box, int(layer), timings, counts)
                 for box, layer in zip(boxes, layers, strict=True)]

        clock = time.perf_counter()
        if len(boxes) == 1:  # no crop layers: the crop is the whole image
            data = parts[0]
            data["crop_index"] = np.zeros(len(data), np.int64)
        else:
            data = _merge_crops(parts, boxes, (h, w), s.crop_nms_thresh)
        if s.min_mask_region_area > 0 and len(data):
            data["masks"], changed = mk.remove_small_regions(data["masks"], s.min_mask_region_area)
            # As the reference: prefer unchanged masks, then remove new duplicates.
            keep = mk.nms(mk.masks_to_boxes(data["masks"]), (~changed).astype(np.float32),
                          max(s.box_nms_thresh, s.crop_nms_thresh))
            keep = keep[data["masks"][keep].reshape(len(keep), -1).any(axis=1)]
            data = data.filter(keep[np.argsort(-data["iou"][keep], kind="stable")])
        timings["postprocess"] += time.perf_counter() - clock

        info = {
            "provider": self.provider,
            "model_type": self.manifest.model_type,
            "precision": self.manifest.precision,
            "settings": asdict(s),
            **counts,
            "crops": boxes.tolist(),
            "crop_index": data["crop_index"].tolist(),
            "stability_scores": data["stability"].astype(float).tolist(),
            "point_coords": data["points"].astype(float).tolist(),
        }
        return Concepts(masks=data["masks"], scores=data["iou"].astype(np.float32), source=SOURCE, frame=frame,
                        timings=timings, info=info)

    def _process_crop(self, image: np.ndarray, box: np.ndarray, layer: int, timings: dict[str, float],
                      counts: dict[str, int]) -> MaskData:
        """Masks of one crop box (the whole image for layer 0).

        Returns MaskData with ``masks`` N×h×w bool (the crop box's size: placed in
        the image frame only for the masks that survive the merge between crops),
        ``iou`` N, ``stability`` N and ``points`` N×2 (prompt of each mask, image
        frame), NMS-filtered within the crop and ordered by predicted IoU.
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
        clock = time.perf_counter()
        embeddings = self.image_context(embeddings)
        timings["decoder"] += time.perf_counter() - clock

        # The prompt frame: the image resized to longest side prompt_size (= resized_hw for SAM).
        prompt_hw = resized_hw if self.prompt_size == self.input_size else mk.longest_side_shape(h, w, self.prompt_size)
        scale = self.low_res_size / self.prompt_size
        valid_hw = (prompt_hw[0] * scale, prompt_hw[1] * scale)
        valid_rows, valid_cols = (min(self.low_res_size, math.ceil(v)) for v in valid_hw)
        per_side = int(s.points_per_side / (s.crop_n_points_downscale_factor**layer))
        grid = mk.point_grid(max(per_side, 1)) * np.array([w, h], np.float64)  # sub-image frame (x, y)
        prompts = (grid * np.array([prompt_hw[1] / w, prompt_hw[0] / h])).astype(np.float32)

        kept: list[MaskData] = []
        levels = pr.schedule_levels(max(per_side, 1), s.prompt_schedule)
        # inside a confidently kept mask (coarse-to-fine only): filled in by each batch, read at each level's start
        covered = np.zeros((h, w), bool)
        for level in levels:
            if len(levels) > 1 and covered.any():
                skip = pr.covered_points(covered, grid[level])
                counts["prompts_skipped"] += int(skip.sum())
                level = level[~skip]
            counts["prompts"] += len(level)
            for start in range(0, len(level), s.points_per_batch):
                index = level[start:start + s.points_per_batch]
                clock = time.perf_counter()
                low_res, iou = self.decode(embeddings, prompts[index])
                timings["decoder"] += time.perf_counter() - clock

                clock = time.perf_counter()
                part = self._filter_batch(low_res, iou, grid[index], (h, w), valid_hw, (valid_rows, valid_cols),
                                          None if full else box, (img_h, img_w), counts,
                                          covered if len(levels) > 1 else None)
                if part is not None:
                    kept.append(part)
                timings["postprocess"] += time.perf_counter() - clock

        clock = time.perf_counter()
        empty = _empty_mask_data((h, w))
        empty.pop("crop_index")
        empty.pop("masks")
        empty.update(boxes=np.zeros((0, 4), np.int64))
        data = MaskData.cat(kept, empty)  # the fields of `empty`: every field but the logits
        counts["after_filters"] += len(data)
        keep = mk.nms(data["boxes"], data["iou"], s.box_nms_thresh)
        counts["after_nms"] += len(keep)
        logits = (mk.take_rows([part["logits"] for part in kept], keep) if len(keep)
                  else np.zeros((0, self.low_res_size, self.low_res_size), np.float32))
        data = data.filter(keep)
        data = MaskData(masks=self._masks(logits, (h, w), valid_hw),
                        **{name: data[name] for name in ("iou", "stability", "points")})
        if not full:
            data["points"] = data["points"] + np.array([x0, y0], np.float64)
        timings["postprocess"] += time.perf_counter() - clock
        return data

    def _filter_batch(self, low_res: np.ndarray, iou: np.ndarray, points: np.ndarray, hw: tuple[int, int],
                      valid_hw: tuple[float, float], valid_rc: tuple[int, int], crop_box: np.ndarray | None,
                      image_hw: tuple[int, int], counts: dict[str, int],
                      covered: np.ndarray | None = None) -> MaskData | None:
        """The candidates of one decoder batch that pass the filters, with their boxes in the sub-image frame.

        Parameters
        ----------
        low_res : ndarray of float32, B×3×L×L
        iou : ndarray of float32, B×3
        points : ndarray, B×2
            The prompts (x, y) in the sub-image frame.
        hw : (int, int)
            Sub-image size.
        valid_hw, valid_rc
            The resized image's extent in the low-res grid (float, and whole rows/columns).
        crop_box : ndarray or None
            The crop box when the sub-image is a crop (masks near its inner edges are dropped).
        image_hw : (int, int)
            Whole image size.
        counts : dict
            Candidate counts, updated.
        covered : ndarray of bool, h×w, optional
            Coarse-to-fine's map of points inside confidently kept masks: the kept masks of predicted IoU ≥
            ``skip_iou_thresh``, shrunk by :data:`SKIP_EROSION_PX`, are added to it in place.

        Returns
        -------
        MaskData or None
            ``logits`` K×L×L (low-res), ``boxes`` K×4 (x0, y0, x1, y1 of the mask in the sub-image frame),
            ``iou``, ``stability``, ``points``; None when nothing passed.
        """
        s = self.settings
        n_masks = low_res.shape[1]
        candidates = MaskData(logits=low_res.reshape(-1, low_res.shape[2], low_res.shape[3]),
                              iou=iou.reshape(-1), points=np.repeat(points, n_masks, axis=0))
        counts["candidates"] += len(candidates)
        if s.pred_iou_thresh > FILTER_DISABLED_AT:
            candidates = candidates.filter(candidates["iou"] > s.pred_iou_thresh)
        valid_rows, valid_cols = valid_rc
        candidates["stability"] = mk.stability_scores(
            candidates["logits"][:, :valid_rows, :valid_cols], self.mask_threshold, s.stability_score_offset)
        if s.stability_score_thresh > FILTER_DISABLED_AT:
            candidates = candidates.filter(candidates["stability"] >= s.stability_score_thresh)
        if not len(candidates):
            return None
        # Full-frame masks a few at a time, only for their boxes (and the covered map): what is kept is the low-res
        # logits, upsampled again once NMS has chosen (a 12-megapixel photo's mask is 48 MB as float32 logits).
        ok = np.zeros(len(candidates), bool)
        boxes = np.zeros((len(candidates), 4), np.int64)
        for start in range(0, len(candidates), MASK_CHUNK):
            part = slice(start, start + MASK_CHUNK)
            masks = self._masks(candidates["logits"][part], hw, valid_hw)
            ok[part] = masks.reshape(len(masks), -1).any(axis=1)  # empty masks are no concepts
            boxes[part] = mk.masks_to_boxes(masks)
            if crop_box is not None:
                ok[part] &= ~mk.boxes_near_crop_edge(boxes[part], crop_box, image_hw)
            if covered is not None:
                confident = ok[part] & (candidates["iou"][part] >= s.skip_iou_thresh)
                covered |= pr.covered_map(masks[confident], hw, SKIP_EROSION_PX)
        if not ok.any():
            return None
        return MaskData(logits=candidates["logits"][ok], boxes=boxes[ok], iou=candidates["iou"][ok],
                        stability=candidates["stability"][ok], points=candidates["points"][ok])

    def _masks(self, logits: np.ndarray, hw: tuple[int, int], valid_hw: tuple[float, float]) -> np.ndarray:
        """Low-res logits K×L×L → K×h×w bool masks of the sub-image, :data:`MASK_CHUNK` at a time."""
        out = np.empty((len(logits), *hw), bool)
        for start in range(0, len(logits), MASK_CHUNK):
            part = logits[start:start + MASK_CHUNK]
            out[start:start + len(part)] = mk.logits_to_frame(part, hw, valid_hw) > self.mask_threshold
        return out


def _static_side(shape: list[Any]) -> int | None:
    """The side of a square ``[..., S, S]`` graph shape when both are fixed numbers, else None."""
    if len(shape) < 2 or not all(isinstance(v, int) for v in shape[-2:]) or shape[-1] != shape[-2]:
        return None
    return int(shape[-1])


def _check_sizes(manifest: SamManifest, encoder, decoder) -> None:
    """The graphs' fixed image and mask sizes must be the manifest's (a manifest naming another model size fails here).

    Raises
    ------
    ModelFolderError
        ``encoder.onnx`` takes another input size, or ``decoder.onnx`` returns masks of
        another low-resolution size, than the manifest says.
    """
    side = _static_side(list(encoder.get_inputs()[0].shape))
    if side is not None and side != manifest.encoder.input_size:
        raise ModelFolderError(
            f"encoder.onnx takes {side}×{side} images but the manifest (model type {manifest.model_type}) says "
            f"input_size {manifest.encoder.input_size}: the manifest belongs to another SAM size; re-run the export")
    low = _static_side(list(decoder.get_outputs()[0].shape))
    if low is not None and low != manifest.decoder.low_res_size:
        raise ModelFolderError(
            f"decoder.onnx returns {low}×{low} masks but the manifest (model type {manifest.model_type}) says "
            f"low_res_size {manifest.decoder.low_res_size}: the manifest belongs to another SAM size; "
            "re-run the export")


def _merge_crops(parts: list[MaskData], boxes: np.ndarray, hw: tuple[int, int], nms_thresh: float) -> MaskData:
    """Join the masks of several crop boxes, drop duplicates between crops, place the rest in the image frame.

    Parameters
    ----------
    parts : list of MaskData
        One per crop box: ``masks`` n×h_c×w_c (the box's size), ``iou``, ``stability``, ``points``.
    boxes : ndarray of int, C×4
        The crop boxes, ``x0, y0, x1, y1`` in the image frame.
    hw : (int, int)
        The image's height and width.
    nms_thresh : float
        Box IoU above which the mask of the larger crop is dropped (segment-anything's
        ``crop_nms_thresh``: masks from smaller crops are preferred).

    Returns
    -------
    MaskData
        ``masks`` K×H×W bool, ``iou``, ``stability``, ``points``, ``crop_index``, ordered by
        predicted IoU. Only the K survivors are ever held at the image's size.
    """
    offsets = np.asarray(boxes, np.int64)[:, [0, 1, 0, 1]]
    fields = ("iou", "stability", "points")
    joined = []
    for i, part in enumerate(parts):
        frame_boxes = mk.masks_to_boxes(part["masks"]) + offsets[i]
        empty = ~part["masks"].reshape(len(part), -1).any(axis=1) if len(part) else np.zeros(0, bool)
        frame_boxes[empty] = 0  # an empty mask's box, as masks_to_boxes gives it in the image frame
        joined.append(MaskData(**{name: part[name] for name in fields}, boxes=frame_boxes,
                               crop_index=np.full(len(part), i, np.int64), local=np.arange(len(part))))
    empty_data = _empty_mask_data(hw)
    empty_data.pop("masks")
    data = MaskData.cat(joined, {**empty_data, "boxes": np.zeros((0, 4), np.int64),
                                 "local": np.zeros(0, np.int64)})
    if len(data):
        crop_area = mk.box_area(boxes)[data["crop_index"]]
        keep = mk.nms(data["boxes"], 1.0 / crop_area, nms_thresh)
        data = data.filter(keep[np.argsort(-data["iou"][keep], kind="stable")])
    masks = np.zeros((len(data), *hw), bool)
    for k, (i, j) in enumerate(zip(data["crop_index"], data["local"], strict=True)):
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        masks[k, y0:y1, x0:x1] = parts[i]["masks"][j]
    return MaskData(masks=masks, **{name: data[name] for name in (*fields, "crop_index")})


def _empty_mask_data(hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Zero-length arrays of every per-mask field (the image frame is ``hw``)."""
    return {"masks": np.zeros((0, *hw), bool), "iou": np.zeros(0, np.float32),
            "stability": np.zeros(0, np.float32), "points": np.zeros((0, 2)),
            "crop_index": np.zeros(0, np.int64)}


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
