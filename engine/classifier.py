"""The classifier at run time: a model folder, its preprocessing, batched inference.

A classifier folder is written by ``eac export classifier`` or ``eac import-onnx``
(see the manifest layout in :mod:`eac.export.classifier`). :class:`Classifier`
reads it, checks that the ONNX file matches its manifest, creates one ONNX
Runtime session and reuses it. It is safe to call from several threads at once
(it keeps no per-call state; the session runner is thread-safe).

Preprocessing follows the manifest: resize the shorter side to ``resize``,
centre-crop ``crop`` (:func:`eac.engine.images.resize_crop_frame`), scale pixels by
1/255, subtract ``mean`` and divide by ``std`` (given in R, G, B order), reorder
channels to the model's order, NCHW.

Models whose batch axis is fixed (``input.batch`` an integer in the manifest,
typical of ONNX files found in the wild) are run chunk by chunk, padding the last
chunk, so :meth:`Classifier.run` takes any batch size. Models that output
probabilities return log-probabilities, so that callers always get scores whose
softmax is the model's class distribution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .concepts import Frame
from .errors import InputShapeError, ModelFolderError
from .images import apply_frame, resize_crop_frame, to_rgb_uint8
from .manifest import MANIFEST_NAME, model_path, read_manifest, verify_files
from .session import SessionOptions, SessionRunner, TensorRTProfile, active_provider, create_session

OUTPUT_KINDS = ("logits", "probabilities")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
#: Probabilities are clipped to at least this before the log (log(0) = -inf).
PROB_FLOOR = float(np.finfo(np.float32).tiny)
_ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_REEXPORT = "re-run `eac export classifier` or `eac import-onnx`"


@dataclass(frozen=True)
class ClassifierOutput:
    """What :meth:`Classifier.run` returns.

    Attributes
    ----------
    logits : ndarray of float32, B×K
        Logits, or log-probabilities for models that output probabilities
        (``output_kind == "probabilities"``); softmax of either is the class distribution.
    features : ndarray of float32, B×D, or None
        The input of the final linear layer, when the folder has a features output.
    provider : str
        The ONNX Runtime execution provider that ran the model.
    """

    logits: np.ndarray
    features: np.ndarray | None
    provider: str


class Classifier:
    """An image classifier from a model folder, run with ONNX Runtime.

    Create with :meth:`from_folder`.

    Attributes
    ----------
    folder : Path
    manifest : dict
    input_hw : (int, int)
        Network input height and width (the crop).
    resize : int or None
        Shorter side the image is resized to before the crop.
    mean, std : ndarray of float32, (3,)
        Normalisation in R, G, B order, 0-1 scale.
    channel_order : {"RGB", "BGR"}
        Channel order the network expects.
    output_kind : {"logits", "probabilities"}
        What the ONNX graph outputs (``run`` always returns logits or log-probabilities).
    num_classes : int
    labels : list of str or None
    has_features : bool
    feature_dim : int or None
    head : (ndarray K×D float32, ndarray K float32) or None
        The final linear layer (only for folders from ``eac export classifier``).
    provider : str
        Execution provider of the session.
    max_batch : int or None
        Fixed batch size of the graph (None: any batch size in one call).
    """

    def __init__(self, folder: str | os.PathLike, manifest: dict[str, Any], session_options: SessionOptions | None = None):
        self.folder = Path(folder)
        self.manifest = manifest
        self._parse_manifest(manifest)
        profile = None
        if self.max_batch is None:
            shape = (None, 3, *self.input_hw) if self.layout == "NCHW" else (None, *self.input_hw, 3)
            profile = TensorRTProfile({self.input_name: shape})
        self.session = create_session(model_path(self.folder, manifest, "model"), session_options, trt_profile=profile)
        self._check_session()
        opts = session_options or SessionOptions()
        self._runner = SessionRunner(self.session, device_id=opts.cuda_device_id)
        self.provider = active_provider(self.session)
        self.head = self._load_head() if "head" in manifest.get("files", {}) else None
        self._output_names = [self.logits_name] + ([self.features_name] if self.has_features else [])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike, session_options: SessionOptions | None = None, verify: bool = False
    ) -> Classifier:
        """Load a classifier folder.

        Parameters
        ----------
        folder : path-like
            Written by ``eac export classifier`` or ``eac import-onnx``.
        session_options : SessionOptions, optional
            Providers and threads (default: ``"auto"`` providers).
        verify : bool
            Also check every file's SHA-256 against the manifest (reads every
            byte; sizes are always checked).

        Raises
        ------
        ModelFolderError
            Missing folder/file, malformed manifest, or an ONNX file that does not
            match its manifest.
        ManifestVersionError
            The manifest comes from a newer eac.
        """
        manifest = read_manifest(folder, "classifier")
        if verify:
            verify_files(folder, manifest)
        return cls(folder, manifest, session_options)

    def _bad(self, what: str) -> ModelFolderError:
        return ModelFolderError(f"{self.folder / MANIFEST_NAME}: {what}; {_REEXPORT}")

    def _parse_manifest(self, m: dict[str, Any]) -> None:
        try:
            inp = m["input"]
            outputs = m["outputs"]
            pre = m["preprocess"]
            self.input_name = str(inp["name"])
            self.input_hw = (int(inp["height"]), int(inp["width"]))
            batch = inp.get("batch")
            self.max_batch = None if batch is None else int(batch)
            self.layout = str(inp.get("layout", "NCHW"))
            self.logits_name = str(outputs["logits"])
            self.features_name = None if outputs.get("features") is None else str(outputs["features"])
            self.output_kind = str(m["output_kind"])
            self.num_classes = int(m["num_classes"])
            self.feature_dim = None if m.get("feature_dim") is None else int(m["feature_dim"])
            self.labels = None if m.get("labels") is None else [str(s) for s in m["labels"]]
            self.resize = None if pre.get("resize") is None else int(pre["resize"])
            self.mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3)
            self.std = np.asarray(pre["std"], dtype=np.float32).reshape(3)
            self.channel_order = str(pre.get("channel_order", "RGB"))
            self.scale = float(pre.get("scale", 1.0 / 255.0))
            crop = pre.get("crop", list(self.input_hw))
        except (KeyError, TypeError, ValueError) as exc:
            raise self._bad(f"malformed classifier manifest ({type(exc).__name__}: {exc})") from exc
        crop_hw = (int(crop), int(crop)) if isinstance(crop, (int, float)) else (int(crop[0]), int(crop[1]))
        if crop_hw != self.input_hw:
            raise self._bad(f"preprocess crop {crop_hw} differs from the input size {self.input_hw}")
        if self.output_kind not in OUTPUT_KINDS:
            raise self._bad(f"output_kind {self.output_kind!r} is not one of {OUTPUT_KINDS}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise self._bad(f"channel_order {self.channel_order!r} is not one of {CHANNEL_ORDERS}")
        if self.layout not in LAYOUTS:
            raise self._bad(f"input layout {self.layout!r} is not one of {LAYOUTS}")
        if not (np.all(self.std > 0) and np.all(np.isfinite(self.mean))):
            raise self._bad("preprocess std must be positive and mean finite")
        if self.max_batch is not None and self.max_batch < 1:
            raise self._bad(f"input batch {self.max_batch} must be positive or null")
        self.has_features = self.features_name is not None
        if self.has_features and self.feature_dim is None:
            raise self._bad("a features output is named but feature_dim is missing")

    def _check_session(self) -> None:
        """Check the session's inputs/outputs against the manifest."""
        inputs = self.session.get_inputs()
        outputs = {o.name: o for o in self.session.get_outputs()}
        found = f"inputs {[(i.name, i.shape) for i in inputs]}, outputs {[(n, o.shape) for n, o in outputs.items()]}"
        mismatch = f"the ONNX file does not match its manifest ({found})"
        if len(inputs) != 1 or inputs[0].name != self.input_name or len(inputs[0].shape) != 4:
            raise self._bad(mismatch)
        shape = inputs[0].shape
        expected = (self.max_batch, 3, *self.input_hw) if self.layout == "NCHW" else (self.max_batch, *self.input_hw, 3)
        for dim, want in zip(shape, expected):
            if isinstance(dim, int) and want is not None and dim != want:
                raise self._bad(mismatch)
        if self.max_batch is None and isinstance(shape[0], int):
            # The manifest promises any batch size, but the graph's batch axis is static.
            raise self._bad(mismatch)
        if inputs[0].type not in _ORT_FLOAT_TYPES:
            raise self._bad(f"input type {inputs[0].type} is not float32/float16")
        self._input_dtype = _ORT_FLOAT_TYPES[inputs[0].type]
        for name, width in ((self.logits_name, self.num_classes), (self.features_name, self.feature_dim)):
            if name is None:
                continue
            out = outputs.get(name)
            if out is None or len(out.shape) != 2 or (isinstance(out.shape[1], int) and out.shape[1] != width):
                raise self._bad(mismatch)

    def _load_head(self) -> tuple[np.ndarray, np.ndarray]:
        path = model_path(self.folder, self.manifest, "head")
        try:
            with np.load(path, allow_pickle=False) as data:
                weight = np.asarray(data["weight"], dtype=np.float32)
                bias = np.asarray(data["bias"], dtype=np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise ModelFolderError(f"{path}: unreadable head file ({exc}); {_REEXPORT}") from exc
        if weight.shape != (self.num_classes, self.feature_dim) or bias.shape != (self.num_classes,):
            raise ModelFolderError(
                f"{path}: head is {weight.shape}/{bias.shape}, the manifest says "
                f"{self.num_classes}×{self.feature_dim}; {_REEXPORT}"
            )
        return weight, bias

    # ------------------------------------------------------------------ preprocessing
    def frame_for(self, hw: tuple[int, int]) -> Frame:
        """The :class:`Frame` (resize + centre crop) of an image of size ``hw``."""
        return resize_crop_frame(hw, self.resize, self.input_hw)

    def crop(self, image: np.ndarray) -> tuple[np.ndarray, Frame]:
        """Resize and centre-crop an image as the model expects.

        Parameters
        ----------
        image : ndarray, H×W×3 uint8 RGB (other layouts/dtypes converted by
            :func:`eac.engine.images.to_rgb_uint8`)

        Returns
        -------
        crop : ndarray of uint8, h×w×3
        frame : Frame
            Where the crop sits in the image.
        """
        image = to_rgb_uint8(image)
        frame = self.frame_for(image.shape[:2])
        return apply_frame(image, frame), frame

    def normalize(self, crops: np.ndarray) -> np.ndarray:
        """Normalise RGB crops for the network.

        Parameters
        ----------
        crops : ndarray, B×h×w×3 (or h×w×3), uint8 or float on the 0-255 scale, RGB

        Returns
        -------
        ndarray of float32, B×3×h×w
            ``(crops / 255 - mean) / std`` in the model's channel order.
        """
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        h, w = self.input_hw
        if crops.ndim != 4 or crops.shape[1:] != (h, w, 3):
            raise InputShapeError(
                f"crops must be B×{h}×{w}×3 RGB (0-255), got shape {crops.shape}; use classifier.crop(image) first"
            )
        x = crops.astype(np.float32) * np.float32(self.scale)
        x = (x - self.mean) / self.std
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Frame]:
        """``crop`` then ``normalize`` one image: (1×3×h×w float32, Frame)."""
        crop, frame = self.crop(image)
        return self.normalize(crop), frame

    def baseline_value(self) -> np.ndarray:
        """The normalised value of a black pixel, ``(0 - mean) / std``, (3,) float32 in the model's channel order."""
        value = (-self.mean / self.std).astype(np.float32)
        return value[::-1].copy() if self.channel_order == "BGR" else value

    # ------------------------------------------------------------------ inference
    def run(self, batch: np.ndarray) -> ClassifierOutput:
        """Run the model on a normalised batch.

        Parameters
        ----------
        batch : ndarray, B×3×h×w float (from :meth:`normalize`); any B ≥ 0

        Returns
        -------
        ClassifierOutput
            logits B×K (log-probabilities for probability models), features B×D or None.

        Raises
        ------
        InputShapeError
            ``batch`` is not B×3×h×w floats.
        """
        batch = np.asarray(batch)
        h, w = self.input_hw
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise InputShapeError(f"classifier input must be B×3×{h}×{w} float32 (normalised), got shape {batch.shape}")
        if not np.issubdtype(batch.dtype, np.floating):
            raise InputShapeError(
                f"classifier input must be float (normalised), got {batch.dtype}; use classifier.normalize(crops)"
            )
        n = batch.shape[0]
        if n == 0:
            feats = np.zeros((0, self.feature_dim), np.float32) if self.has_features else None
            return ClassifierOutput(np.zeros((0, self.num_classes), np.float32), feats, self.provider)
        if self.max_batch is None:
            outs = self._run_chunk(batch)
        else:
            parts = [self._run_chunk(self._pad(batch[i : i + self.max_batch])) for i in range(0, n, self.max_batch)]
            outs = [np.concatenate([p[j] for p in parts], axis=0)[:n] for j in range(len(parts[0]))]
        logits = outs[0].astype(np.float32, copy=False)
        if self.output_kind == "probabilities":
            logits = np.log(np.clip(logits, PROB_FLOOR, 1.0)).astype(np.float32)
        features = outs[1].astype(np.float32, copy=False).reshape(n, -1) if self.has_features else None
        return ClassifierOutput(logits, features, self.provider)

    def _pad(self, chunk: np.ndarray) -> np.ndarray:
        missing = self.max_batch - chunk.shape[0]
        if missing == 0:
            return chunk
        return np.concatenate([chunk, np.zeros((missing, *chunk.shape[1:]), chunk.dtype)], axis=0)

    def _run_chunk(self, chunk: np.ndarray) -> list[np.ndarray]:
        x = chunk.astype(self._input_dtype, copy=False)
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        outs = self._runner.run({self.input_name: np.ascontiguousarray(x)}, self._output_names)
        logits = outs[0]
        if logits.ndim != 2 or logits.shape != (chunk.shape[0], self.num_classes):
            raise ModelFolderError(
                f"{self.folder}: output {self.logits_name!r} has shape {logits.shape} for a batch of "
                f"{chunk.shape[0]}, expected {chunk.shape[0]}×{self.num_classes}; {_REEXPORT}"
            )
        return outs

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits (or log-probabilities) of a normalised batch, B×K float32."""
        return self.run(batch).logits

    def __repr__(self) -> str:
        return (
            f"Classifier({str(self.folder)!r}, input {self.input_hw}, {self.num_classes} classes, "
            f"{self.output_kind}, features={self.feature_dim}, provider={self.provider})"
        )
