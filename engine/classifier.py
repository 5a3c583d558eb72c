"""The classifier at run time: a model folder, its preprocessing, batched inference.

A classifier folder is written by ``eac export classifier`` or ``eac import-onnx``
(its manifest is :class:`eac.engine.manifest.ClassifierManifest`).
:class:`Classifier` reads it, verifies the files against the manifest's
checksums (cached by size and modification time), checks that the ONNX file
matches its manifest, creates one ONNX Runtime session on its
:class:`~eac.engine.session.Runtime` and reuses it. It is safe to call from
several threads at once (it keeps no per-call state; the session runner is
thread-safe).

Preprocessing follows the manifest: resize the shorter side to ``resize``,
centre-crop ``crop`` (:func:`eac.engine.images.resize_crop_frame`), scale pixels by
1/255, subtract ``mean`` and divide by ``std`` (given in R, G, B order), reorder
channels to the model's order, NCHW.

Models whose batch axis is fixed (``input.batch`` an integer in the manifest,
typical of ONNX files found in the wild) are run chunk by chunk, padding the last
chunk, so :meth:`Classifier.run` takes any batch size. Models that output
probabilities return log-probabilities (:meth:`Classifier.scores_from_output`),
so that callers always get scores whose softmax is the model's class
distribution. Outputs that are not finite raise :class:`NonFiniteOutputError`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .concepts import Frame
from .errors import InputShapeError, ModelFolderError, NonFiniteOutputError
from .images import apply_frame, resize_crop_frame, to_rgb_uint8
from .manifest import MANIFEST_NAME, ClassifierManifest, model_path, verify_files
from .session import Runtime, SessionOptions, TensorRTProfile, active_provider

#: Probabilities are clipped to at least this before the log (log(0) = -inf).
PROB_FLOOR = float(np.finfo(np.float32).tiny)
#: TensorRT profile of the dynamic batch axis when no batch size is given.
DEFAULT_TRT_BATCH = 32
_ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_REEXPORT = "re-run `eac export classifier` or `eac import-onnx`"


#: Fewest classes eac explains: values are changes of a softmax probability, which one output cannot move.
MIN_CLASSES = 2


def single_output(count: int) -> str:
    """Why a classifier with ``count`` (< 2) outputs cannot be explained, and what to do instead."""
    return (f"the classifier has {count} output{'s' if count != 1 else ''}, but eac explains a softmax over "
            f"K ≥ {MIN_CLASSES} classes (one output's probability is always 1, so every value would be 0); "
            "for a binary model with one logit z, export the two logits (0, z)")


@dataclass(frozen=True)
class ClassifierOutput:
    """What :meth:`Classifier.run` returns.

    Attributes
    ----------
    logits : ndarray of float32, B×K
        Logits, or log-probabilities for models that output probabilities
        (``output_kind == "probabilities"``); softmax of either is the class distribution.
    features : ndarray of float32, B×D, or None
        The input of the final linear layer, when asked for and the folder has one.
    provider : str
        The ONNX Runtime execution provider that ran the model.
    feature_map : ndarray of float32, B×C×h×w, or None
        The input of the global pooling before the final linear layer, when
        asked for and the folder has one (CAM, SeCAM).
    """

    logits: np.ndarray
    features: np.ndarray | None
    provider: str
    feature_map: np.ndarray | None = None


class Classifier:
    """An image classifier from a model folder, run with ONNX Runtime.

    Create with :meth:`from_folder`.

    Attributes
    ----------
    folder : Path
    manifest : ClassifierManifest
    runtime : Runtime
        Providers, device and threads of the session.
    input_hw : (int, int)
        Network input height and width (the crop).
    resize : int or None
        Shorter side the image is resized to before the crop.
    mean, std : ndarray of float32, (3,)
        Normalisation in R, G, B order, 0-1 scale.
    channel_order : {"RGB", "BGR"}
    output_kind : {"logits", "probabilities"}
        What the ONNX graph outputs (``run`` always returns logits or log-probabilities).
    num_classes : int
    labels : list of str or None
    has_features, has_feature_map : bool
    feature_dim : int or None
    head : (ndarray K×D float32, ndarray K float32) or None
        The final linear layer, when the folder has ``head.npz``.
    provider : str
        Execution provider of the session.
    max_batch : int or None
        Fixed batch size of the graph (None: any batch size in one call).
    """

    def __init__(self, folder: str | os.PathLike, manifest: ClassifierManifest,
                 runtime: Runtime | SessionOptions | None = None, batch_size: int | None = None):
        self.folder = Path(folder)
        self.manifest = manifest
        self.runtime = Runtime.from_options(runtime)
        m = manifest
        self.input_name = m.input.name
        self.input_hw = m.input.hw
        self.max_batch = m.input.batch
        self.layout = m.input.layout
        self.logits_name = m.logits_output
        self.features_name = m.features_output
        self.feature_map_name = m.feature_map_output
        self.output_kind = m.output_kind
        self.num_classes = m.num_classes
        if self.num_classes < MIN_CLASSES:
            raise ModelFolderError(f"{folder}: {single_output(self.num_classes)}")
        self.feature_dim = m.feature_dim
        self.labels = m.labels
        pre = m.preprocess
        self.resize = pre.resize
        self.mean = np.asarray(pre.mean, dtype=np.float32)
        self.std = np.asarray(pre.std, dtype=np.float32)
        self.channel_order = pre.channel_order
        self.scale = float(pre.scale)
        self.has_features = self.features_name is not None
        self.has_feature_map = self.feature_map_name is not None
        profile = None
        if self.max_batch is None:
            shape = (None, 3, *self.input_hw) if self.layout == "NCHW" else (None, *self.input_hw, 3)
            batch = DEFAULT_TRT_BATCH if batch_size is None else int(batch_size)
            profile = TensorRTProfile({self.input_name: shape}, min_batch=1, opt_batch=batch, max_batch=batch)
        self.session = self.runtime.session(model_path(self.folder, m, "model"), trt_profile=profile)
        self._check_session()
        self._runner = self.runtime.runner(self.session)
        self.provider = active_provider(self.session)
        self.head = self._load_head() if m.has_head else None
        self._compose_session = None
        self._compose_lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike,
        session_options: Runtime | SessionOptions | None = None,
        verify: bool = True,
        batch_size: int | None = None,
    ) -> Classifier:
        """Load a classifier folder.

        Parameters
        ----------
        folder : path-like
            Written by ``eac export classifier`` or ``eac import-onnx``; or the name of a
            shipped classifier (``"demo"`` exactly; a folder of that name is ``"./demo"``), as on
            the command line.
        session_options : Runtime or SessionOptions, optional
            Providers and threads (default: ``"auto"`` providers).
        verify : bool
            Check every file's SHA-256 against the manifest (default; the result
            is cached by path, size and modification time, so unchanged files
            are hashed once). Sizes are always checked.
        batch_size : int, optional
            The evaluation batch size, used to size the TensorRT profile.

        Raises
        ------
        ModelFolderError
            Missing folder/file, malformed manifest, a file whose checksum
            differs, or an ONNX file that does not match its manifest.
        ManifestVersionError
            The manifest comes from a newer eac.
        """
        from .shipped import resolve_model_folder

        folder = resolve_model_folder("classifier", folder)
        manifest = ClassifierManifest.read(folder)
        if verify:
            verify_files(folder, manifest)
        return cls(folder, manifest, session_options, batch_size=batch_size)

    def _bad(self, what: str) -> ModelFolderError:
        return ModelFolderError(f"{self.folder / MANIFEST_NAME}: {what}; {_REEXPORT}")

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
        if self.feature_map_name is not None:
            out = outputs.get(self.feature_map_name)
            if out is None or len(out.shape) != 4:
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
        """The :class:`Frame` of an image of size ``hw``: identity when it already is the input size,
        else resize + centre crop as the manifest says."""
        if tuple(int(v) for v in hw) == tuple(self.input_hw):
            return Frame.identity(self.input_hw)
        return resize_crop_frame(hw, self.resize, self.input_hw)

    def crop(self, image: np.ndarray) -> tuple[np.ndarray, Frame]:
        """The image in the network's input frame.

        An image that already has the input size is taken as the crop (identity
        frame); any other is resized and centre-cropped as the manifest says.
        This is the one place the crop is decided.

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

    def baseline_value(self) -> np.ndarray:
        """The normalised value of a black pixel, ``(0 - mean) / std``, (3,) float32 in the model's channel order."""
        value = (-self.mean / self.std).astype(np.float32)
        return value[::-1].copy() if self.channel_order == "BGR" else value

    # ------------------------------------------------------------------ inference
    def output_names(self, features: bool = True, feature_map: bool = False) -> list[str]:
        """Graph outputs to fetch: logits, then features and the feature map when asked and present."""
        names = [self.logits_name]
        if features and self.has_features:
            names.append(self.features_name)
        if feature_map and self.has_feature_map:
            names.append(self.feature_map_name)
        return names

    def scores_from_output(self, raw: np.ndarray) -> np.ndarray:
        """The graph's class output → logits (or log-probabilities), B×K float32; non-finite values raise.

        Raises
        ------
        NonFiniteOutputError
            The model produced NaN or infinite values.
        """
        raw = np.asarray(raw)
        if not np.isfinite(raw).all():
            bad = int((~np.isfinite(raw)).any(axis=-1).sum()) if raw.ndim == 2 else int(raw.size)
            raise NonFiniteOutputError(
                f"{self.folder}: the classifier produced NaN or infinite values for {bad} of {len(raw)} images; "
                "check the model (and its fp16 export) or its preprocessing in the manifest")
        if self.output_kind == "probabilities":
            return np.log(np.clip(raw, PROB_FLOOR, 1.0)).astype(np.float32)
        return raw.astype(np.float32, copy=False)

    def run(self, batch: np.ndarray, features: bool = True, feature_map: bool = False) -> ClassifierOutput:
        """Run the model on a normalised batch.

        Parameters
        ----------
        batch : ndarray, B×3×h×w float (from :meth:`normalize`); any B ≥ 0
        features : bool
            Also fetch the features output (when the folder has one).
        feature_map : bool
            Also fetch the feature map (when the folder has one).

        Returns
        -------
        ClassifierOutput
            logits B×K (log-probabilities for probability models), features B×D or None,
            feature map B×C×h×w or None.

        Raises
        ------
        InputShapeError
            ``batch`` is not B×3×h×w floats.
        NonFiniteOutputError
            The model produced NaN or infinite scores.
        """
        batch = np.asarray(batch)
        h, w = self.input_hw
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise InputShapeError(f"classifier input must be B×3×{h}×{w} float32 (normalised), got shape {batch.shape}")
        if not np.issubdtype(batch.dtype, np.floating):
            raise InputShapeError(
                f"classifier input must be float (normalised), got {batch.dtype}; use classifier.normalize(crops)"
            )
        names = self.output_names(features, feature_map)
        n = batch.shape[0]
        if n == 0:
            feats = np.zeros((0, self.feature_dim), np.float32) if features and self.has_features else None
            return ClassifierOutput(np.zeros((0, self.num_classes), np.float32), feats, self.provider)
        if self.max_batch is None:
            outs = self._run_chunk(batch, names)
        else:
            parts = [self._run_chunk(self._pad(batch[i : i + self.max_batch]), names)
                     for i in range(0, n, self.max_batch)]
            outs = [np.concatenate([p[j] for p in parts], axis=0)[:n] for j in range(len(names))]
        got = dict(zip(names, outs))
        logits = self.scores_from_output(got[self.logits_name])
        feats = got.get(self.features_name) if features else None
        fmap = got.get(self.feature_map_name) if feature_map else None
        return ClassifierOutput(
            logits,
            None if feats is None else feats.astype(np.float32, copy=False).reshape(n, -1),
            self.provider,
            None if fmap is None else fmap.astype(np.float32, copy=False),
        )

    def _pad(self, chunk: np.ndarray) -> np.ndarray:
        missing = self.max_batch - chunk.shape[0]
        if missing == 0:
            return chunk
        return np.concatenate([chunk, np.zeros((missing, *chunk.shape[1:]), chunk.dtype)], axis=0)

    def _run_chunk(self, chunk: np.ndarray, names: list[str]) -> list[np.ndarray]:
        x = chunk.astype(self._input_dtype, copy=False)
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        outs = self._runner.run({self.input_name: np.ascontiguousarray(x)}, names)
        logits = outs[0]
        if logits.ndim != 2 or logits.shape != (chunk.shape[0], self.num_classes):
            raise ModelFolderError(
                f"{self.folder}: output {self.logits_name!r} has shape {logits.shape} for a batch of "
                f"{chunk.shape[0]}, expected {chunk.shape[0]}×{self.num_classes}; {_REEXPORT}"
            )
        return outs

    # ------------------------------------------------------------------ on-device composition
    @property
    def supports_device_compose(self) -> bool:
        """Whether a composed batch can go straight from the device into this model
        (dynamic batch, NCHW float32 input)."""
        return self.max_batch is None and self.layout == "NCHW" and self._input_dtype == np.float32

    def compose_session(self):
        """The composition graph's session on this classifier's runtime, created once and cached."""
        with self._compose_lock:
            if self._compose_session is None:
                from .device_compose import COMPOSE_PATH

                self._compose_session = self.runtime.session(COMPOSE_PATH)
            return self._compose_session

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits (or log-probabilities) of a normalised batch, B×K float32."""
        return self.run(batch, features=False).logits

    def __repr__(self) -> str:
        return (
            f"Classifier({str(self.folder)!r}, input {self.input_hw}, {self.num_classes} classes, "
            f"{self.output_kind}, features={self.feature_dim}, provider={self.provider})"
        )
