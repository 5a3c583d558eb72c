"""Model-folder manifests: one ``manifest.json`` per exported model folder.

A manifest says what a folder holds (``kind``: ``"sam"`` or ``"classifier"``),
which files belong to it (with size and SHA-256), the input contract and the
validation result of the export. The runtime reads it to create sessions; the
exporters write it last, so a folder with a manifest is a complete folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import ManifestVersionError, ModelFolderError

MANIFEST_NAME = "manifest.json"
#: Version of the manifest layout. Bump when a reader of the old layout would
#: misread the new one; readers refuse manifests with a larger number.
FORMAT_VERSION = 1
KINDS = ("sam", "classifier")
_HASH_CHUNK_BYTES = 1 << 22


def eac_version() -> str:
    """The installed eac version (``"unknown"`` when run from a bare checkout)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return "unknown"
    try:
        return version("eac")
    except PackageNotFoundError:
        return "unknown"


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
    tmp = path.with_suffix(".json.tmp")
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
            f"{version} > {FORMAT_VERSION}); upgrade eac (`pip install -U eac`) or re-export with this one"
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


def verify_files(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Check every file of ``manifest`` against its SHA-256; raise on mismatch."""
    folder = Path(folder)
    for role, entry in manifest.get("files", {}).items():
        if "sha256" not in entry:
            continue
        actual = file_sha256(folder / entry["path"])
        if actual != entry["sha256"]:
            raise ModelFolderError(
                f"{folder / entry['path']}: checksum differs from the manifest ({role}); re-run the export"
            )


def model_path(folder: str | os.PathLike, manifest: dict[str, Any], role: str) -> Path:
    """Path of the file with ``role`` (e.g. ``"encoder"``) in a model folder."""
    try:
        return Path(folder) / manifest["files"][role]["path"]
    except KeyError as exc:
        raise ModelFolderError(f"{folder}: the manifest lists no {role!r} file; re-run the export") from exc
