"""What the three exporters (SAM, classifier, ONNX import) share, written once; no torch.

* :func:`first_line` — an exception's first message line, for one-line errors.
* :func:`check_output_folder` / :class:`StagedFolder` — the output folder is checked
  before any work, written under a hidden temporary sibling and renamed into place
  when complete, so nothing half-written is ever left at ``out``.
* :func:`read_labels` / :func:`check_labels` — class names from a text file, and
  their count against the model's class count.
* :func:`save_onnx` / :func:`file_entries` — an ONNX file saved with its weights in
  an external data file above protobuf's 2 GB limit, and the manifest entries
  (size, SHA-256 from :func:`eac.engine.manifest.file_entry`) of what was written.
* :func:`cpu_session` — the ONNX Runtime CPU session every validation runs on.
* :func:`check_finite` — refuse a model whose outputs hold NaN or Inf.

The torch-dependent helpers (checkpoints, factories, fp16 with fp32 norms) are in
:mod:`eac.export._torch_utils`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.manifest import file_entry
from .errors import ExportError

#: A protobuf message cannot exceed 2 GiB; larger graphs keep their weights outside.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
#: Headroom below the limit (graph structure, names) before external data is used.
PROTOBUF_MARGIN_BYTES = 64 * 2**20
#: Suffix of the external data file (``encoder.onnx`` → ``encoder.onnx.data``).
EXTERNAL_DATA_SUFFIX = ".data"
#: Tensors smaller than this stay inside the graph file when external data is used.
EXTERNAL_DATA_THRESHOLD_BYTES = 1024
#: Manifest role of a graph's external data file (``encoder`` → ``encoder_data``).
DATA_ROLE_SUFFIX = "_data"
#: Mode of a finished output folder before the umask is applied (as ``mkdir``).
FOLDER_MODE = 0o777
#: ONNX Runtime log severities: errors and up, or fatal only.
ORT_LOG_ERRORS = 3
ORT_LOG_FATAL = 4


def first_line(exc: BaseException) -> str:
    """First non-empty line of an exception message (or its type name)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


# --------------------------------------------------------------------------- output folders
def check_output_folder(out: str | os.PathLike) -> Path:
    """Refuse an output location that is a file or a non-empty folder (before any work).

    Returns
    -------
    Path
        ``out`` with ``~`` expanded.

    Raises
    ------
    ExportError
        ``out`` exists and is not an empty folder.
    """
    out = Path(out).expanduser()
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out}: output exists and is not a folder; choose another --out")
        if any(out.iterdir()):
            raise ExportError(
                f"{out}: output exists and is not an empty folder; choose another --out or remove it"
            )
    return out


class StagedFolder:
    """An output folder written under a temporary name and renamed when complete.

    Use as a context manager: ``with StagedFolder(out) as tmp: ...write into tmp...;
    staged.commit()``. Leaving the block without :meth:`commit` (an exception)
    removes the temporary folder. The final folder must not exist or be empty.

    Raises
    ------
    ExportError
        ``out`` exists and is not an empty folder, its parent cannot be written,
        or the finished folder cannot be moved into place.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out).expanduser()
        self.path: Path | None = None
        self.committed = False

    def __enter__(self) -> Path:
        out = check_output_folder(self.out)
        parent = out.absolute().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
        except OSError as exc:
            raise ExportError(
                f"{out}: cannot create the output folder ({exc.strerror or first_line(exc)}); "
                "choose a writable --out"
            ) from exc
        return self.path

    def commit(self) -> Path:
        """Rename the temporary folder to its final name; returns the final path."""
        if self.path is None:
            raise RuntimeError("StagedFolder.commit() called outside its with-block")
        try:
            # mkdtemp creates the folder 0700; give it the permissions a plain mkdir would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.path, FOLDER_MODE & ~umask)
            if self.out.is_dir():
                self.out.rmdir()  # empty (checked on entry)
            os.replace(self.path, self.out)
        except OSError as exc:
            raise ExportError(
                f"{self.out}: cannot move the finished export into place ({first_line(exc)})"
            ) from exc
        self.committed = True
        return self.out

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


# --------------------------------------------------------------------------- labels
def read_labels(path: str | os.PathLike | None) -> list[str] | None:
    """Class names from a text file, one per line (blank lines at the end ignored).

    Raises
    ------
    ExportError
        Unreadable or empty file.
    """
    if path is None:
        return None
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read the labels file ({first_line(exc)})") from exc
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise ExportError(f"{path}: the labels file is empty; give one class name per line")
    return labels


def check_labels(labels: list[str] | None, num_classes: int, path: str | os.PathLike | None) -> None:
    """Refuse a labels list whose length is not the model's class count K.

    Raises
    ------
    ExportError
        ``len(labels) != num_classes`` (the message gives both numbers).
    """
    if labels is not None and len(labels) != num_classes:
        raise ExportError(
            f"{path}: {len(labels)} labels but the model has {num_classes} classes; "
            "give one class name per line, in class-index order"
        )


# --------------------------------------------------------------------------- ONNX files
def _over_protobuf_limit(model) -> bool:
    try:
        return model.ByteSize() >= PROTOBUF_LIMIT_BYTES - PROTOBUF_MARGIN_BYTES
    except Exception:  # ByteSize itself fails past 2 GiB on some protobuf builds
        return True


def save_onnx(model, path: str | os.PathLike) -> list[str]:
    """Save an ONNX ``model`` at ``path``; its weights go to ``<name>.data`` above the 2 GB limit.

    Parameters
    ----------
    model : onnx.ModelProto
    path : path-like
        The ``.onnx`` file; the external data file, when needed, sits beside it.

    Returns
    -------
    list of str
        The file names written, the graph first (then its external data file, if any).

    Raises
    ------
    ExportError
        The file cannot be written.
    """
    import onnx

    path = Path(path)
    try:
        if not _over_protobuf_limit(model):
            onnx.save_model(model, str(path))
            return [path.name]
        data_name = path.name + EXTERNAL_DATA_SUFFIX
        (path.parent / data_name).unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=EXTERNAL_DATA_THRESHOLD_BYTES)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot write the model ({first_line(exc)})") from exc
    return [path.name, data_name]


def file_entries(folder: str | os.PathLike, role: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Manifest ``files`` entries of a graph saved by :func:`save_onnx`.

    Returns
    -------
    dict
        ``{role: entry}``, plus ``{role + "_data": entry}`` when the graph has an
        external data file; entries as :func:`eac.engine.manifest.file_entry` makes them.
    """
    entries = {role: file_entry(folder, names[0])}
    if len(names) > 1:
        entries[role + DATA_ROLE_SUFFIX] = file_entry(folder, names[1])
    return entries


# --------------------------------------------------------------------------- running
def cpu_session(path: str | os.PathLike, what: str = "the exported graph", quiet: bool = False,
                mem_arena: bool = True):
    """An ONNX Runtime session on the CPU provider, as every export validation uses.

    Parameters
    ----------
    path : path-like
        The ``.onnx`` file.
    what : str
        How messages name the model.
    quiet : bool
        Log only fatal errors (for loads whose failure is an expected outcome).
    mem_arena : bool
        Use ONNX Runtime's CPU memory arena (off lowers the peak memory of big graphs).

    Raises
    ------
    ExportError
        ONNX Runtime cannot load the file.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = ORT_LOG_FATAL if quiet else ORT_LOG_ERRORS
    so.enable_cpu_mem_arena = mem_arena
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        raise ExportError(f"ONNX Runtime cannot load {what} ({first_line(exc)})") from exc


def shape_text(shape) -> str:
    """``(2, 3, 32, 32)`` → ``"2×3×32×32"`` (for messages)."""
    return "×".join(str(int(d)) for d in shape)


def check_finite(outputs: Mapping[str, np.ndarray | None], model: str, on: str) -> None:
    """Refuse a model whose outputs hold NaN or Inf on a test input.

    Parameters
    ----------
    outputs : mapping of str to ndarray
        Output name → values (None entries are skipped).
    model : str
        How the message names the model (a path, ``--module pkg.mod:f``...).
    on : str
        What the input was (``"a random 2×3×32×32 input"``).

    Raises
    ------
    ExportError
        One line naming the model, the output and how many values are not finite.
    """
    for name, values in outputs.items():
        if values is None:
            continue
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.floating):
            continue
        bad = ~np.isfinite(values)
        if bad.any():
            kinds = " and ".join(k for k, m in (("NaN", np.isnan(values)), ("Inf", np.isinf(values)))
                                 if m.any())
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ExportError(
                f"{model}: output {name!r} contains {kinds} ({int(bad.sum())} of {values.size} values, "
                f"first at {where}) on {on}; the model is broken or its weights are corrupt, "
                "so it cannot be explained"
            )


__all__ = [
    "StagedFolder", "check_finite", "check_labels", "check_output_folder", "cpu_session", "file_entries",
    "first_line", "read_labels", "save_onnx", "shape_text",
]
