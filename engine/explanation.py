"""The result of explaining one image: :class:`Explanation`, with save / load.

The explanation is data and its files; pictures are made from it by
:mod:`eac.engine.render`. ``save(folder)`` writes

``explanation.json``
    values (and standard errors), ranking, ties, targets, probabilities,
    method, settings, value type, evaluation count, timings, provider, metrics,
    and a random ``save_id``.
``masks.npz``
    the N×h×w concept masks (bit-packed) and the same ``save_id``, so
    :meth:`Explanation.load` gives the whole object back and can tell that the
    two files come from one save.
``crop.png``
    the image the explanation lives in (the classifier's crop).
``overlay.png``, ``heatmap.png``, ``values.png``, ``top<rank>_concept<index>.png``
    the pictures (:func:`eac.engine.render.write_pictures`): the top concepts
    on the image with a legend (one panel per target), every concept's value
    painted over the image, the values with their 95 % intervals (only with
    matplotlib, the ``plot`` extra), and cut-outs of the top-k concepts.

The JSON is strict: NaN and ±Infinity are never written; absent or non-finite
numbers are ``null`` (read back as NaN where a float array is needed). Finite
floats are written with Python's shortest round-trip representation, so loaded
values equal the saved ones exactly.

Saving is atomic per folder (:func:`eac.engine.atomic.write_folder`): everything
is written into a hidden temporary sibling folder (``.<name>.tmp-<pid>-<random>``)
that is then renamed into place, so the destination either holds one complete,
consistent result or does not exist. Saving again replaces the folder whole (no
stale files are left from an earlier result); when several processes save to one
destination at once, the last rename wins and each folder stays internally
consistent. A temporary folder left by a killed process is hidden and ignored by
:meth:`Explanation.load`.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..kernels.rle import decode_masks, encode_masks
from .atomic import check_destination, write_folder
from .concepts import Frame
from .dataset_schema import SCHEMA_VERSION
from .errors import ExplainError

STAGES = ("concepts", "evaluations", "fit", "values")
VALUE_TYPES = ("shapley", "banzhaf", "other")
JSON_NAME = "explanation.json"
MASKS_NAME = "masks.npz"
CROP_NAME = "crop.png"
DEFAULT_TOP_K = 5
#: Random bytes of a save id.
SAVE_ID_BYTES = 8
#: Picture names and functions that lived here before :mod:`eac.engine.render`; they still resolve here
#: (name → render module).
MOVED_TO_RENDER = {
    "render_overlay": "overlay", "cutout": "cutout", "format_value": "text", "value_colour": "scale",
    "OVERLAY_NAME": "files", "CUTOUT_PATTERN": "files",
}


@dataclass
class Explanation:
    """Concept values for one image and one or several explained classes.

    Attributes
    ----------
    values : ndarray of float64, N (one target) or T×N
        Value of each concept for each explained class (the change in the
        class probability a concept brings, in the method's sense).
    masks : ndarray of bool, N×h×w
        The concepts, in the crop's frame.
    targets : list of int
        Explained class indices (T of them).
    probabilities : list of float
        The classifier's probability of each target on the whole crop.
    method : str
        ``"eac"``, ``"eac-faithful"``, ``"shapley-exact"``, ``"kernelshap"``, ``"lime"``, ``"loo"``.
    value_type : {"shapley", "banzhaf", "other"}
        What the values estimate.
    settings : dict
        The method's settings (seed, sample counts, baseline, batch size...).
    num_evaluations : int
        Images run through the classifier (masked and full).
    timings : dict of str to float
        Seconds per stage: ``concepts``, ``evaluations``, ``fit``, ``values``.
    stderr : ndarray, same shape as values, or None
        Monte-Carlo standard errors when the values were sampled. For ``eac``
        (N > 16) and ``eac-faithful`` they measure the sampling error of the
        values *of the fitted surrogate*, not how well the surrogate fits the
        classifier (see ``info["surrogate_r2"]`` / ``info["final_bce"]``).
    labels : list of str or None
        Class names of the targets, when the classifier has labels.
    provider : str or None
        ONNX Runtime execution provider used.
    crop : ndarray of uint8, h×w×3, or None
        The explained image in the crop frame (for the overlay).
    frame : Frame or None
        Where the crop sits in the original image (map masks back with
        ``frame.to_original(masks)``).
    info : dict
        Extra results (surrogate fit quality, metrics, stopping round...).
    ties : list of list of int, or None
        Groups of concept indices (for the first target) whose confidence
        intervals overlap, so their order is not established; each group is
        sorted and has at least two members. ``None``: not estimated; ``[]``:
        estimated, no ties.

    Raises
    ------
    ExplainError
        Unknown ``value_type``, values that do not match the masks, or ties
        naming concepts that do not exist.
    """

    values: np.ndarray
    masks: np.ndarray
    targets: list[int]
    probabilities: list[float]
    method: str
    value_type: str
    settings: dict[str, Any] = field(default_factory=dict)
    num_evaluations: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    stderr: np.ndarray | None = None
    labels: list[str] | None = None
    provider: str | None = None
    crop: np.ndarray | None = None
    frame: Frame | None = None
    info: dict[str, Any] = field(default_factory=dict)
    ties: list[list[int]] | None = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.stderr is not None:
            self.stderr = np.asarray(self.stderr, dtype=np.float64)
        if self.value_type not in VALUE_TYPES:
            raise ExplainError(f"value_type must be one of {VALUE_TYPES}, got {self.value_type!r}")
        n = self.masks.shape[0]
        if self.values.shape[-1] != n or self.values.ndim not in (1, 2):
            raise ExplainError(f"values {self.values.shape} do not match {n} concepts")
        if self.stderr is not None and self.stderr.shape != self.values.shape:
            raise ExplainError(
                f"stderr {self.stderr.shape} does not match values {self.values.shape}"
            )
        if self.ties is not None:
            self.ties = _normalise_ties(self.ties, n)
        for stage in STAGES:
            self.timings.setdefault(stage, 0.0)

    # ------------------------------------------------------------------ views
    @property
    def num_concepts(self) -> int:
        """Number of concepts N."""
        return int(self.masks.shape[0])

    @property
    def target(self) -> int:
        """The (first) explained class."""
        return int(self.targets[0])

    @property
    def probability(self) -> float:
        """The classifier's probability of :attr:`target` on the whole crop."""
        return float(self.probabilities[0])

    @property
    def values_2d(self) -> np.ndarray:
        """Values as T×N whatever the number of targets."""
        return self.values[None] if self.values.ndim == 1 else self.values

    @property
    def stderr_2d(self) -> np.ndarray | None:
        """Standard errors as T×N (or None when the values were not sampled)."""
        if self.stderr is None:
            return None
        return self.stderr[None] if self.stderr.ndim == 1 else self.stderr

    @property
    def ranking(self) -> np.ndarray:
        """Concept indices by decreasing value (N, or T×N); ties keep index order, NaN last."""
        return np.argsort(-self.values, axis=-1, kind="stable")

    def top(self, k: int = DEFAULT_TOP_K, target_index: int = 0) -> list[int]:
        """The k best concepts for the ``target_index``-th target (k ≥ 0)."""
        if k < 0:
            raise ExplainError(f"top_k must be 0 or more, got {k}")
        return [int(i) for i in np.argsort(-self.values_2d[target_index], kind="stable")[:k]]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the masks and the image, as strict-JSON-safe data.

        Returns
        -------
        dict
            Plain Python data (no numpy types); non-finite numbers are ``None``,
            so ``json.dumps(..., allow_nan=False)`` accepts it.
        """
        return strict_json(
            {
                "schema_version": SCHEMA_VERSION,
                "method": self.method,
                "value_type": self.value_type,
                "targets": [int(t) for t in self.targets],
                "labels": self.labels,
                "probabilities": [float(p) for p in self.probabilities],
                "num_concepts": self.num_concepts,
                "values": self.values,
                "values_shape": list(self.values.shape),
                "stderr": self.stderr,
                "ranking": self.ranking,
                "ties": self.ties,
                "concept_areas": self.masks.sum(axis=(1, 2)) if self.masks.ndim == 3 else [],
                "masks_rle": encode_masks(self.masks) if self.masks.ndim == 3 and self.masks.size else [],
                "num_evaluations": int(self.num_evaluations),
                "timings": {k: float(v) for k, v in self.timings.items()},
                "provider": self.provider,
                "settings": self.settings,
                "frame": None if self.frame is None else self.frame.to_dict(),
                "info": self.info,
                "masks_file": MASKS_NAME,
                "crop_file": CROP_NAME if self.crop is not None else None,
            }
        )

    # ------------------------------------------------------------------ files
    def save(self, folder: str | os.PathLike, top_k: int = DEFAULT_TOP_K) -> Path:
        """Write the JSON, masks, crop and pictures as one folder, atomically.

        Everything is written into a hidden temporary sibling of ``folder`` that
        is then renamed to ``folder``, replacing an earlier explanation there
        whole. ``folder`` must be new, empty, or a folder written by ``save``.

        Parameters
        ----------
        folder : str or path-like
            Destination folder (its parents are created).
        top_k : int
            Concepts drawn on the overlay and written as cut-outs.

        Returns
        -------
        Path
            The path of ``explanation.json`` in ``folder``.

        Raises
        ------
        ExplainError
            Negative ``top_k``, a destination that cannot hold the result (see
            :func:`check_output_folder`), or writing failed; nothing is left behind then.
        """
        if top_k < 0:
            raise ExplainError(f"top_k must be 0 or more, got {top_k}")
        dest = check_output_folder(folder)
        save_id = secrets.token_hex(SAVE_ID_BYTES)
        write_folder(dest, lambda tmp: self._write_files(tmp, top_k, save_id), what="explanation",
                     error=ExplainError)
        return dest / JSON_NAME

    def _write_files(self, folder: Path, top_k: int, save_id: str) -> None:
        """Write every file of a saved explanation into ``folder`` (which exists)."""
        from .render.files import write_pictures, write_png  # pictures are made from the data, not part of it

        np.savez_compressed(
            folder / MASKS_NAME,
            packed=np.packbits(self.masks.reshape(-1)),
            shape=np.array(self.masks.shape, dtype=np.int64),
            save_id=np.array(save_id),
        )
        if self.crop is not None:
            write_png(folder / CROP_NAME, cv2.cvtColor(self.crop, cv2.COLOR_RGB2BGR))
            write_pictures(self, folder, top_k)
        data = self.to_dict()
        data["save_id"] = save_id
        (folder / JSON_NAME).write_text(json.dumps(data, indent=1, allow_nan=False))

    @classmethod
    def load(cls, source: str | os.PathLike) -> Explanation:
        """Read an explanation written by :meth:`save`.

        Parameters
        ----------
        source : str or path-like
            The folder, or its ``explanation.json``.

        Returns
        -------
        Explanation
            ``null`` numbers come back as NaN in the values, standard errors,
            probabilities and timings.

        Raises
        ------
        ExplainError
            No or unreadable JSON, or a ``masks.npz`` from a different save.
        """
        path = Path(source)
        if path.is_dir():
            path = path / JSON_NAME
        if not path.is_file():
            raise ExplainError(
                f"{path}: no explanation.json there; give a folder written by Explanation.save"
            )
        try:
            data = json.loads(path.read_text())
            n = int(data["num_concepts"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExplainError(f"{path}: not a readable explanation JSON ({exc})") from exc
        folder = path.parent
        masks_path = folder / data.get("masks_file", MASKS_NAME)
        if masks_path.is_file():
            with np.load(masks_path) as z:
                shape = tuple(int(s) for s in z["shape"])
                masks = (
                    np.unpackbits(z["packed"], count=int(np.prod(shape)))
                    .reshape(shape)
                    .astype(bool)
                )
                masks_id = str(z["save_id"]) if "save_id" in z.files else None
            if (
                masks_id is not None
                and data.get("save_id") is not None
                and masks_id != data["save_id"]
            ):
                raise ExplainError(
                    f"{folder}: {JSON_NAME} and {masks_path.name} come from different saves; "
                    "save the explanation again"
                )
        elif data.get("masks_rle"):
            masks = decode_masks(data["masks_rle"])
        else:
            masks = np.zeros((n, 0, 0), dtype=bool)
        crop = None
        if data.get("crop_file") and (folder / data["crop_file"]).is_file():
            crop = cv2.cvtColor(
                cv2.imread(str(folder / data["crop_file"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
            )
        shape = tuple(int(v) for v in data.get("values_shape", [n]))
        values = _float_array(data["values"]).reshape(shape)
        stderr = (
            None
            if data.get("stderr") is None
            else _float_array(data["stderr"]).reshape(values.shape)
        )
        timings = {k: _float(v) for k, v in (data.get("timings") or {}).items()}
        return cls(
            values=values,
            masks=masks,
            targets=list(data["targets"]),
            probabilities=[_float(p) for p in data["probabilities"]],
            method=data["method"],
            value_type=data["value_type"],
            settings=data.get("settings", {}),
            num_evaluations=int(data.get("num_evaluations", 0)),
            timings=timings,
            stderr=stderr,
            labels=data.get("labels"),
            provider=data.get("provider"),
            crop=crop,
            frame=Frame.from_dict(data["frame"]) if data.get("frame") else None,
            info=data.get("info", {}),
            ties=data.get("ties"),
        )


# ---------------------------------------------------------------------- JSON
def strict_json(obj: Any) -> Any:
    """``obj`` as plain, strict-JSON-safe Python data.

    Parameters
    ----------
    obj : Any
        Nested dicts, lists, tuples, numpy arrays and scalars, numbers, strings.

    Returns
    -------
    Any
        The same structure with numpy types made plain, non-finite floats
        replaced by ``None``, dict keys made strings, and anything else
        (paths, objects) replaced by its ``str``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, dict):
        return {
            k if isinstance(k, str) else str(strict_json(k)): strict_json(v) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return str(obj)


def _float(value: Any) -> float:
    """A JSON number, or NaN for ``null``."""
    return math.nan if value is None else float(value)


def _float_array(data: Any) -> np.ndarray:
    """A (nested) JSON list of numbers and ``null`` as a float64 array (``null`` → NaN)."""
    return np.array(data, dtype=np.float64)  # numpy reads None as NaN for a float dtype


def _normalise_ties(ties: Any, n: int) -> list[list[int]]:
    """Sorted groups of valid concept indices, singletons dropped."""
    groups = []
    for group in ties:
        members = sorted({int(i) for i in group})
        if members and (members[0] < 0 or members[-1] >= n):
            raise ExplainError(f"ties {list(group)} name concepts outside 0..{n - 1}")
        if len(members) >= 2:
            groups.append(members)
    return groups


# ---------------------------------------------------------------------- folders
def check_output_folder(path: str | os.PathLike, *, replace: bool = True) -> Path:
    """Check, before any work and leaving nothing behind, that an explanation can be saved at ``path``.

    Call it before computing, so a bad destination fails at once.

    Parameters
    ----------
    path : str or path-like
        The folder :meth:`Explanation.save` will write (``replace=True``), or a
        folder that per-image result folders will be written into
        (``replace=False``).
    replace : bool
        Whether ``path`` itself is replaced whole by a save. Then an existing
        ``path`` must be empty or hold an earlier explanation (a folder of
        other files is never replaced), and its parent must be writable.
        Otherwise ``path``, when it exists, must be a writable folder.

    Returns
    -------
    Path
        The absolute destination (a symbolic link to a folder is resolved).

    Raises
    ------
    ExplainError
        ``path`` is a file, lies under a file, is not writable, or (``replace``)
        is a folder holding files that are not an explanation; one line.
    """
    return check_destination(path, JSON_NAME, replace=replace, what="explanation", error=ExplainError)


def __getattr__(name: str) -> Any:
    """Names that moved to :mod:`eac.engine.render` (:data:`MOVED_TO_RENDER`) still resolve here."""
    if name in MOVED_TO_RENDER:
        from importlib import import_module

        return getattr(import_module(f"{__package__}.render.{MOVED_TO_RENDER[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
