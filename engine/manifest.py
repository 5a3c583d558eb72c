"""Model-folder manifests: one ``manifest.json`` per exported model folder.

A manifest says what a folder holds (``kind``: ``"sam"`` or ``"classifier"``),
which files belong to it (with size and SHA-256), the input contract and the
validation result of the export. The runtime reads it to create sessions; the
exporters write it last, so a folder with a manifest is a complete folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .distribution import installed_version, upgrade_hint
from .errors import ManifestVersionError, ModelFolderError

MANIFEST_NAME = "manifest.json"
#: Version of the manifest layout. Bump when a reader of the old layout would
#: misread the new one; readers refuse manifests with a larger number.
FORMAT_VERSION = 1
KINDS = ("sam", "classifier")
_HASH_CHUNK_BYTES = 1 << 22


def eac_version() -> str:
    """The installed eac version (``"unknown"`` when run from a bare checkout); see :mod:`eac.engine.distribution`."""
    return installed_version()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in chunks (works for multi-GB files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(folder: str | os.PathLike, name: str) -> dict[str, Any]:
    """Manifest entry ``{"path", "bytes", "sha256"}`` for ``folder/name``."""
    path = Path(folder) / name
    return {"path": name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` to ``folder/manifest.json`` atomically.

    ``format_version`` and ``eac_version`` are filled in when absent. The file
    is written to a temporary name and renamed, so a reader never sees half a
    manifest.
    """
    if manifest.get("kind") not in KINDS:
        raise ValueError(f"manifest kind must be one of {KINDS}, got {manifest.get('kind')!r}")
    data = {"format_version": FORMAT_VERSION, "eac_version": eac_version(), **manifest}
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(folder: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read and check ``folder/manifest.json``.

    Parameters
    ----------
    folder : path-like
        A model folder written by ``eac export`` or ``eac import-onnx``.
    kind : {"sam", "classifier"}, optional
        The kind of folder expected; a different kind raises.

    Returns
    -------
    dict
        The manifest, with every listed file checked to exist with the recorded
        size (checksums are checked by :func:`verify_files`, which reads every byte).

    Raises
    ------
    ModelFolderError
        Missing folder or manifest, unreadable JSON, wrong kind, missing file,
        or a file whose size differs from the manifest.
    ManifestVersionError
        The manifest comes from a newer eac.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder; create one with `eac export` or `eac import-onnx`")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelFolderError(
            f"{folder}: no {MANIFEST_NAME}; this is not a model folder written by `eac export` or "
            "`eac import-onnx` (or the export was interrupted: run it again)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{path}: unreadable manifest ({exc}); re-run the export") from exc
    if not isinstance(manifest, dict):
        raise ModelFolderError(f"{path}: manifest is not a JSON object; re-run the export")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise ModelFolderError(f"{path}: manifest has no integer format_version; re-run the export")
    if version > FORMAT_VERSION:
        raise ManifestVersionError(
            f"{path}: written by a newer eac ({manifest.get('eac_version', '?')}, manifest format "
            f"{version} > {FORMAT_VERSION}); upgrade eac ({upgrade_hint()}) or re-export with this one"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise ModelFolderError(
            f"{folder}: holds a {manifest.get('kind')!r} model, but a {kind!r} model folder is needed here"
        )
    for role, entry in manifest.get("files", {}).items():
        file_path = folder / entry["path"]
        if not file_path.is_file():
            raise ModelFolderError(
                f"{folder}: the {role} file {entry['path']} listed in {MANIFEST_NAME} is missing; "
                "copy the whole folder or re-run the export"
            )
        size = file_path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise ModelFolderError(
                f"{file_path}: {size} bytes but the manifest says {entry['bytes']}; the file was changed or "
                "truncated: re-run the export"
            )
    return manifest


#: File of the checksum cache in the eac cache folder: verified files by path, size and mtime.
VERIFIED_CACHE_NAME = "verified-files.json"
#: The cache keeps at most this many entries (oldest dropped), so it cannot grow without bound.
VERIFIED_CACHE_MAX = 4096


def cache_dir() -> Path:
    """eac's cache folder: ``$EAC_CACHE``, default ``~/.cache/eac``."""
    return Path(os.environ.get("EAC_CACHE") or Path.home() / ".cache" / "eac")


def _files_of(manifest: Any) -> dict[str, Any]:
    return manifest.files if hasattr(manifest, "files") else manifest.get("files", {})


def _stat_key(path: Path) -> list[Any]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_verified() -> dict[str, Any]:
    try:
        data = json.loads((cache_dir() / VERIFIED_CACHE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_verified(entries: dict[str, Any]) -> None:
    """Best effort: an unwritable cache only means files are hashed again next time."""
    folder = cache_dir()
    if len(entries) > VERIFIED_CACHE_MAX:
        entries = dict(list(entries.items())[-VERIFIED_CACHE_MAX:])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{VERIFIED_CACHE_NAME}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, folder / VERIFIED_CACHE_NAME)
    except OSError:
        pass


def verify_files(folder: str | os.PathLike, manifest: Any, use_cache: bool = True) -> None:
    """Check every file of ``manifest`` (a dict or a typed manifest) against its SHA-256.

    A file whose path, size, modification time and expected checksum match an
    earlier successful check (kept in ``$EAC_CACHE/verified-files.json``) is
    not read again, so a multi-GB model is hashed once, not on every load.

    Raises
    ------
    ModelFolderError
        A file's checksum differs from the manifest.
    """
    folder = Path(folder)
    cache = _read_verified() if use_cache else {}
    changed = False
    for role, entry in _files_of(manifest).items():
        if "sha256" not in entry:
            continue
        path = (folder / entry["path"]).resolve()
        key = str(path)
        stamp = [*_stat_key(path), entry["sha256"]]
        if cache.get(key) == stamp:
            continue
        actual = file_sha256(path)
        if actual != entry["sha256"]:
            raise ModelFolderError(
                f"{folder / entry['path']}: checksum differs from the manifest ({role}): the file was changed "
                "or damaged; re-run the export (or pass --no-verify to use it anyway)"
            )
        cache.pop(key, None)
        cache[key] = stamp
        changed = True
    if use_cache and changed:
        _write_verified(cache)


def model_path(folder: str | os.PathLike, manifest: Any, role: str) -> Path:
    """Path of the file with ``role`` (e.g. ``"encoder"``) in a model folder (dict or typed manifest)."""
    try:
        return Path(folder) / _files_of(manifest)[role]["path"]
    except KeyError as exc:
        raise ModelFolderError(f"{folder}: the manifest lists no {role!r} file; re-run the export") from exc


# --------------------------------------------------------------------------- shared constants
#: ImageNet normalisation (R, G, B order, 0-1 scale): the default of exporters and the CLI.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: uint8 pixels are scaled by this before mean/std normalisation.
PIXEL_SCALE = 1.0 / 255.0
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
OUTPUT_KINDS = ("logits", "probabilities")
PRECISIONS = ("fp32", "fp16")
_REEXPORT = "re-run `eac export classifier` or `eac import-onnx`"


def _floats(values: Any, count: int) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != count:
        raise ValueError(f"expected {count} numbers, got {len(out)}")
    return out


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the classifier's input (manifest ``preprocess``).

    Resize the shorter side to ``resize`` (None: keep), centre-crop ``crop``
    (height, width), multiply by ``scale``, subtract ``mean`` and divide by
    ``std`` (both in R, G, B order, 0-1 scale), then reorder channels to
    ``channel_order``.
    """

    crop: tuple[int, int]
    resize: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    scale: float = PIXEL_SCALE

    def validate(self) -> None:
        """Raise ValueError when a field is out of range."""
        if min(self.crop) < 1:
            raise ValueError(f"crop {self.crop} must be positive")
        if self.resize is not None and self.resize < 1:
            raise ValueError(f"resize {self.resize} must be positive or null")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order {self.channel_order!r} is not one of {CHANNEL_ORDERS}")
        if not all(s > 0 for s in self.std) or not all(math.isfinite(m) for m in self.mean):
            raise ValueError("preprocess std must be positive and mean finite")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"scale {self.scale} must be positive")

    def to_dict(self) -> dict[str, Any]:
        crop: Any = self.crop[0] if self.crop[0] == self.crop[1] else list(self.crop)
        return {"resize": self.resize, "crop": crop, "mean": list(self.mean), "std": list(self.std),
                "stats_order": "RGB", "channel_order": self.channel_order, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict[str, Any], input_hw: tuple[int, int]) -> Preprocess:
        crop = data.get("crop", list(input_hw))
        crop_hw = (int(crop), int(crop)) if isinstance(crop, (int, float)) else (int(crop[0]), int(crop[1]))
        return cls(crop=crop_hw, resize=None if data.get("resize") is None else int(data["resize"]),
                   mean=_floats(data["mean"], 3), std=_floats(data["std"], 3),  # type: ignore[arg-type]
                   channel_order=str(data.get("channel_order", "RGB")),
                   scale=float(data.get("scale", PIXEL_SCALE)))


@dataclass(frozen=True)
class ClassifierInput:
    """The classifier graph's image input (manifest ``input``)."""

    name: str
    height: int
    width: int
    batch: int | None = None
    layout: str = "NCHW"
    dtype: str = "float32"

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierInput:
        batch = data.get("batch")
        return cls(name=str(data["name"]), height=int(data["height"]), width=int(data["width"]),
                   batch=None if batch is None else int(batch), layout=str(data.get("layout", "NCHW")),
                   dtype=str(data.get("dtype", "float32")))


@dataclass
class ClassifierManifest:
    """The manifest of a classifier folder (``eac export classifier`` / ``eac import-onnx``).

    The JSON layout (``manifest.json``) is the one :meth:`to_dict` writes; fields
    this class does not model (``fp32_layers``, exporter notes...) are kept in
    ``extra`` and written back unchanged.
    """

    files: dict[str, dict[str, Any]]
    input: ClassifierInput
    logits_output: str
    num_classes: int
    preprocess: Preprocess
    output_kind: str = "logits"
    features_output: str | None = None
    feature_dim: int | None = None
    feature_map_output: str | None = None
    labels: list[str] | None = None
    opset: int | None = None
    precision: str = "fp32"
    validation: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "classifier"

    @property
    def has_features(self) -> bool:
        return self.features_output is not None

    @property
    def has_head(self) -> bool:
        return "head" in self.files

    def validate(self) -> None:
        """Raise ValueError when the manifest is inconsistent."""
        self.preprocess.validate()
        if self.preprocess.crop != self.input.hw:
            raise ValueError(f"preprocess crop {self.preprocess.crop} differs from the input size {self.input.hw}")
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind {self.output_kind!r} is not one of {OUTPUT_KINDS}")
        if self.input.layout not in LAYOUTS:
            raise ValueError(f"input layout {self.input.layout!r} is not one of {LAYOUTS}")
        if self.input.batch is not None and self.input.batch < 1:
            raise ValueError(f"input batch {self.input.batch} must be positive or null")
        if self.num_classes < 1:
            raise ValueError(f"num_classes {self.num_classes} must be positive")
        if self.has_features and self.feature_dim is None:
            raise ValueError("a features output is named but feature_dim is missing")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")
        if "model" not in self.files:
            raise ValueError("the manifest lists no model file")

    def to_dict(self) -> dict[str, Any]:
        outputs = {"logits": self.logits_output, "features": self.features_output,
                   "feature_map": self.feature_map_output}
        return {
            "kind": self.kind, "opset": self.opset, "precision": self.precision, **self.extra,
            "files": self.files, "input": self.input.to_dict(), "outputs": outputs,
            "output_kind": self.output_kind, "num_classes": self.num_classes, "feature_dim": self.feature_dim,
            "labels": self.labels, "preprocess": self.preprocess.to_dict(), "validation": self.validation,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | os.PathLike = MANIFEST_NAME) -> ClassifierManifest:
        """Parse and validate a manifest dict; ModelFolderError names ``where`` and the fix."""
        known = {"format_version", "eac_version", "kind", "opset", "precision", "files", "input", "outputs",
                 "output_kind", "num_classes", "feature_dim", "labels", "preprocess", "validation", "source"}
        try:
            inp = ClassifierInput.from_dict(data["input"])
            outputs = data["outputs"]
            manifest = cls(
                files=dict(data.get("files", {})), input=inp, logits_output=str(outputs["logits"]),
                num_classes=int(data["num_classes"]), preprocess=Preprocess.from_dict(data["preprocess"], inp.hw),
                output_kind=str(data["output_kind"]),
                features_output=None if outputs.get("features") is None else str(outputs["features"]),
                feature_dim=None if data.get("feature_dim") is None else int(data["feature_dim"]),
                feature_map_output=None if outputs.get("feature_map") is None else str(outputs["feature_map"]),
                labels=None if data.get("labels") is None else [str(s) for s in data["labels"]],
                opset=None if data.get("opset") is None else int(data["opset"]),
                precision=str(data.get("precision", "fp32")), validation=dict(data.get("validation") or {}),
                source=dict(data.get("source") or {}),
                extra={k: v for k, v in data.items() if k not in known},
            )
            manifest.validate()
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFolderError(f"{where}: malformed classifier manifest ({type(exc).__name__}: {exc}); "
                                   f"{_REEXPORT}") from exc
        return manifest

    @classmethod
    def read(cls, folder: str | os.PathLike) -> ClassifierManifest:
        """Read ``folder/manifest.json`` (files checked by size; see :func:`read_manifest`)."""
        return cls.from_dict(read_manifest(folder, cls.kind), Path(folder) / MANIFEST_NAME)

    def write(self, folder: str | os.PathLike) -> Path:
        """Validate and write ``folder/manifest.json`` atomically."""
        self.validate()
        return write_manifest(folder, self.to_dict())


@dataclass(frozen=True)
class SamEncoderSpec:
    """The SAM encoder's contract (manifest ``encoder``): resize, normalise, pad, encode."""

    input: str
    output: str
    input_size: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    normalize_in_graph: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "input_size": self.input_size,
                "pixel_mean": list(self.pixel_mean), "pixel_std": list(self.pixel_std),
                "normalize_in_graph": self.normalize_in_graph, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamEncoderSpec:
        known = {"input", "output", "input_size", "pixel_mean", "pixel_std", "normalize_in_graph"}
        return cls(input=str(data["input"]), output=str(data["output"]), input_size=int(data["input_size"]),
                   pixel_mean=_floats(data["pixel_mean"], 3), pixel_std=_floats(data["pixel_std"], 3),  # type: ignore[arg-type]
                   normalize_in_graph=bool(data.get("normalize_in_graph", False)),
                   extra={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class SamDecoderSpec:
    """The batched prompt decoder's contract (manifest ``decoder``)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    low_res_size: int
    mask_threshold: float = 0.0
    shapes: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs), "shapes": self.shapes,
                "mask_threshold": self.mask_threshold, "low_res_size": self.low_res_size, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamDecoderSpec:
        known = {"inputs", "outputs", "shapes", "mask_threshold", "low_res_size"}
        return cls(inputs=tuple(str(s) for s in data["inputs"]), outputs=tuple(str(s) for s in data["outputs"]),
                   low_res_size=int(data["low_res_size"]), mask_threshold=float(data.get("mask_threshold", 0.0)),
                   shapes=dict(data.get("shapes") or {}), extra={k: v for k, v in data.items() if k not in known})


#: Top-level manifest key of a SAM folder: generator settings measured on that model (see :class:`SamManifest`).
RECOMMENDED_SETTINGS_KEY = "recommended_settings"


@dataclass
class SamManifest:
    """The manifest of a SAM folder (``eac export sam``).

    ``recommended_settings`` (in ``extra``, optional): generator settings measured on this model and
    written by its exporter (e.g. the prompt schedule of the SAM trained here); :meth:`SamConceptGenerator.from_folder
    <eac.engine.sam.SamConceptGenerator.from_folder>` applies them where the caller sets nothing.
    """

    model_type: str
    files: dict[str, dict[str, Any]]
    encoder: SamEncoderSpec
    decoder: SamDecoderSpec
    opset: int | None = None
    precision: str = "fp32"
    validation: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "sam"

    def validate(self) -> None:
        """Raise ValueError when the manifest is inconsistent."""
        if self.encoder.input_size < 1 or self.decoder.low_res_size < 1:
            raise ValueError("input_size and low_res_size must be positive")
        if not all(s > 0 for s in self.encoder.pixel_std):
            raise ValueError("pixel_std must be positive")
        if len(self.decoder.inputs) != 3 or len(self.decoder.outputs) != 2:
            raise ValueError("the decoder takes (embeddings, point coords, point labels) and returns "
                             "(low-res masks, IoU predictions)")
        for role in ("encoder", "decoder"):
            if role not in self.files:
                raise ValueError(f"the manifest lists no {role} file")
        if not isinstance(self.extra.get(RECOMMENDED_SETTINGS_KEY, {}), dict):
            raise ValueError(f"{RECOMMENDED_SETTINGS_KEY} must map generator settings to values")

    @property
    def recommended_settings(self) -> dict[str, Any]:
        """Generator settings recommended for this model by its exporter ({} when none)."""
        return dict(self.extra.get(RECOMMENDED_SETTINGS_KEY, {}))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model_type": self.model_type, "opset": self.opset,
                "precision": self.precision, "files": self.files, "encoder": self.encoder.to_dict(),
                "decoder": self.decoder.to_dict(), **self.extra, "validation": self.validation,
                "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | os.PathLike = MANIFEST_NAME) -> SamManifest:
        known = {"format_version", "eac_version", "kind", "model_type", "opset", "precision", "files",
                 "encoder", "decoder", "validation", "source"}
        try:
            manifest = cls(
                model_type=str(data.get("model_type")), files=dict(data.get("files", {})),
                encoder=SamEncoderSpec.from_dict(data["encoder"]), decoder=SamDecoderSpec.from_dict(data["decoder"]),
                opset=None if data.get("opset") is None else int(data["opset"]),
                precision=str(data.get("precision", "fp32")), validation=dict(data.get("validation") or {}),
                source=dict(data.get("source") or {}), extra={k: v for k, v in data.items() if k not in known},
            )
            manifest.validate()
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFolderError(
                f"{where}: the SAM manifest is incomplete or malformed ({type(exc).__name__}: {exc}); "
                "re-run `eac export sam`") from exc
        return manifest

    @classmethod
    def read(cls, folder: str | os.PathLike) -> SamManifest:
        return cls.from_dict(read_manifest(folder, cls.kind), Path(folder) / MANIFEST_NAME)

    def write(self, folder: str | os.PathLike) -> Path:
        self.validate()
        return write_manifest(folder, self.to_dict())


@dataclass(frozen=True)
class ComposeSpec:
    """The masked-batch composition graph (``engine/data/compose.onnx``, built by
    :mod:`eac.export.compose`, run by :mod:`eac.engine.device_compose`): its I/O names."""

    coalitions: str = "coalitions"
    concept_masks: str = "concept_masks"
    image: str = "image"
    baseline: str = "baseline"
    invert: str = "invert"
    output: str = "input"
    opset: int = 13
    filename: str = "compose.onnx"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.coalitions, self.concept_masks, self.image, self.baseline, self.invert)


#: The one composition graph contract.
COMPOSE = ComposeSpec()
