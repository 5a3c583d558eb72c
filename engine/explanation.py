"""The result of explaining one image: :class:`Explanation`, with save / load.

``save(folder)`` writes

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
``overlay.png`` (and ``overlay_target<t>.png`` for further targets)
    the crop, upscaled to at least :data:`MIN_OVERLAY_HEIGHT` pixels, with the
    top-k concepts filled and outlined in a diverging colour for their signed
    value (blue negative, white 0, red positive, symmetric around 0), numbered
    by rank, with a legend (colour bar, values with their standard errors,
    tied ranks).
``concept_<rank>.png``
    RGBA cut-outs of the top-k concepts (transparent outside the mask), scaled
    up to at least :data:`MIN_CUTOUT_SIDE` pixels on the longer side.

The JSON is strict: NaN and ±Infinity are never written; absent or non-finite
numbers are ``null`` (read back as NaN where a float array is needed). Finite
floats are written with Python's shortest round-trip representation, so loaded
values equal the saved ones exactly.

Saving is atomic per folder: everything is written into a hidden temporary
sibling folder (``.<name>.tmp-<pid>-<random>``) that is then renamed into
place, so the destination either holds one complete, consistent result or does
not exist. Saving again replaces the folder whole (no stale files are left from
an earlier result); when several processes save to one destination at once,
the last rename wins and each folder stays internally consistent. A temporary
folder left by a killed process is hidden and ignored by :meth:`Explanation.load`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..kernels.rle import decode_masks, encode_masks
from .concepts import Frame
from .dataset_schema import SCHEMA_VERSION
from .errors import ExplainError

STAGES = ("concepts", "evaluations", "fit", "values")
VALUE_TYPES = ("shapley", "banzhaf", "other")
JSON_NAME = "explanation.json"
MASKS_NAME = "masks.npz"
CROP_NAME = "crop.png"
OVERLAY_NAME = "overlay.png"
#: Overlay of the t-th target (t ≥ 1); the first target's is :data:`OVERLAY_NAME`.
TARGET_OVERLAY_PATTERN = "overlay_target{index}.png"
#: Cut-out of the concept at a rank (1-based).
CUTOUT_PATTERN = "concept_{rank}.png"
DEFAULT_TOP_K = 5

#: Saving: hidden sibling folders are named ``.<name><tag><pid>-<random hex>``.
TMP_TAG = ".tmp-"
OLD_TAG = ".old-"
#: Random bytes of a save id and of a temporary folder's name.
SAVE_ID_BYTES = 8
NAME_RANDOM_BYTES = 6
#: How often a save retries moving its folder into place while other processes
#: save to the same destination.
REPLACE_ATTEMPTS = 64

#: Overlay rendering: the picture is upscaled (by a whole factor, nearest
#: neighbour) to at least this height, so small-input classifiers stay readable.
MIN_OVERLAY_HEIGHT = 448
OVERLAY_ALPHA = 0.55
#: BGR colours of the diverging scale: −max, 0, +max; and of a non-finite value.
NEGATIVE_COLOUR = (255, 64, 0)
ZERO_COLOUR = (255, 255, 255)
POSITIVE_COLOUR = (0, 24, 230)
NAN_COLOUR = (150, 150, 150)
OUTLINE_COLOUR = (40, 40, 40)
OUTLINE_THICKNESS = 2
TEXT_COLOUR = (0, 0, 0)
MUTED_COLOUR = (90, 90, 90)
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.5
RANK_FONT_SCALE = 0.8
LINE_HEIGHT = 22
LEGEND_ROW = 28
LEGEND_PAD = 10
LEGEND_MIN_WIDTH = 260
SWATCH = 18
SWATCH_GAP = 8
#: Legend rows are columns (rank, value ± stderr, concept, tie tag): gap after each, colour.
CELL_GAPS = (10, 14, 14, 0)
CELL_COLOURS = ((0, 0, 0), (0, 0, 0), (90, 90, 90), (0, 0, 0))
COLOUR_BAR_WIDTH = 200
COLOUR_BAR_HEIGHT = 14
#: Longest class label shown in the legend (longer ones end with "...").
LABEL_MAX_CHARS = 36
#: Significant digits of values and of their standard errors.
VALUE_DIGITS = 3
STDERR_DIGITS = 2
#: Cut-outs are scaled up (nearest neighbour, whole factor) to at least this
#: many pixels on their longer side.
MIN_CUTOUT_SIDE = 128


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
        """Write the JSON, masks, crop, overlays and top-k cut-outs as one folder, atomically.

        Everything is written into a hidden temporary sibling of ``folder`` that
        is then renamed to ``folder``, replacing an earlier explanation there
        whole. ``folder`` must be new, empty, or a folder written by ``save``.

        Parameters
        ----------
        folder : str or path-like
            Destination folder (its parents are created).
        top_k : int
            Concepts drawn on the overlays and written as cut-outs.

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
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExplainError(
                f"{dest}: cannot create the output folder ({_os_reason(exc)})"
            ) from exc
        tmp = _make_sibling(dest, TMP_TAG)
        try:
            self._write_files(tmp, top_k, secrets.token_hex(SAVE_ID_BYTES))
            _move_into_place(tmp, dest)
        except OSError as exc:
            raise ExplainError(f"{dest}: cannot write the explanation ({_os_reason(exc)})") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
        return dest / JSON_NAME

    def _write_files(self, folder: Path, top_k: int, save_id: str) -> None:
        """Write every file of a saved explanation into ``folder`` (which exists)."""
        np.savez_compressed(
            folder / MASKS_NAME,
            packed=np.packbits(self.masks.reshape(-1)),
            shape=np.array(self.masks.shape, dtype=np.int64),
            save_id=np.array(save_id),
        )
        if self.crop is not None:
            _write_png(folder / CROP_NAME, cv2.cvtColor(self.crop, cv2.COLOR_RGB2BGR))
            for t in range(len(self.targets)):
                name = OVERLAY_NAME if t == 0 else TARGET_OVERLAY_PATTERN.format(index=t)
                _write_png(folder / name, render_overlay(self, top_k=top_k, target_index=t))
            for rank, i in enumerate(self.top(top_k), start=1):
                _write_png(
                    folder / CUTOUT_PATTERN.format(rank=rank), cutout(self.crop, self.masks[i])
                )
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
    """Check, without writing anything, that an explanation can be saved at ``path``.

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
    dest = Path(os.path.abspath(Path(path).expanduser()))
    if dest.is_symlink() and dest.is_dir():
        dest = dest.resolve()
    if dest.parent == dest:
        raise ExplainError(
            f"{dest}: cannot write an explanation as the filesystem root; give a folder below it"
        )
    if dest.exists() and not dest.is_dir():
        raise ExplainError(f"{dest}: is a file, not a folder; give a folder path for the output")
    nearest = dest.parent if replace else dest
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise ExplainError(f"{dest}: cannot create the output folder, {nearest} is a file")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ExplainError(
            f"{dest}: cannot write there, {nearest} is not writable; give another output folder"
        )
    if replace and _holds_foreign_files(dest):
        raise ExplainError(
            f"{dest}: folder holds files that are not an explanation and saving replaces the "
            "folder whole; give a new or empty folder"
        )
    return dest


def _holds_foreign_files(folder: Path) -> bool:
    """Whether ``folder`` is a folder holding entries but no explanation.

    The folder is listed once (one directory, even while other processes swap
    folders at that path), so an explanation being replaced is never mistaken
    for foreign files. An unreadable folder counts as foreign.
    """
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries]
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return bool(names) and JSON_NAME not in names


def _sibling_name(dest: Path, tag: str) -> Path:
    """A hidden, unique-by-chance sibling of ``dest``: ``.<name><tag><pid>-<random>``."""
    return dest.with_name(f".{dest.name}{tag}{os.getpid()}-{secrets.token_hex(NAME_RANDOM_BYTES)}")


def _make_sibling(dest: Path, tag: str) -> Path:
    """Create an empty hidden sibling folder of ``dest`` (with the permissions of a plain mkdir)."""
    for _ in range(REPLACE_ATTEMPTS):
        path = _sibling_name(dest, tag)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise ExplainError(
                f"{dest}: cannot create a folder beside it ({_os_reason(exc)})"
            ) from exc
        return path
    raise ExplainError(f"{dest}: cannot find a free temporary name beside it")


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished folder ``tmp`` to ``dest``, replacing a folder there whole.

    POSIX ``rename`` replaces only an empty folder, so an existing ``dest`` is
    first renamed aside (a hidden sibling) and deleted after the new folder is
    in place. When another process does the same at the same moment, either
    rename may fail; the loop then tries again, and the last rename wins.
    """
    aside: list[Path] = []
    placed = False
    try:
        for _ in range(REPLACE_ATTEMPTS):
            try:
                os.rename(tmp, dest)
                placed = True
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            old = _sibling_name(dest, OLD_TAG)
            try:
                os.rename(dest, old)
            except FileNotFoundError:
                continue  # another process moved it away first
            aside.append(old)
        raise ExplainError(
            f"{dest}: could not move the result into place; other processes keep writing there"
        )
    finally:
        if not placed and aside:
            # Interrupted after setting the old result aside: put it back if nothing took its place.
            try:
                os.rename(aside[-1], dest)
                aside.pop()
            except OSError:
                pass
        for old in aside:
            shutil.rmtree(old, ignore_errors=True)


def _os_reason(exc: OSError) -> str:
    """An OSError's reason on one line."""
    return exc.strerror or str(exc).splitlines()[0]


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ExplainError(f"{path}: opencv could not encode the PNG")
    buf.tofile(str(path))


# ---------------------------------------------------------------------- pictures
def format_value(value: float, stderr: float | None = None) -> str:
    """A value with significant digits and a sign, and its standard error when known.

    Parameters
    ----------
    value : float
    stderr : float or None

    Returns
    -------
    str
        E.g. ``"+0.412 ± 0.013"``, ``"-3.1e-05"``; ``"n/a"`` for a non-finite value.
    """
    if not math.isfinite(value):
        return "n/a"
    text = f"{value:+.{VALUE_DIGITS}g}"
    if stderr is not None and math.isfinite(stderr):
        text += f" ± {stderr:.{STDERR_DIGITS}g}"
    return text


def value_colour(value: float, scale: float) -> tuple[int, int, int]:
    """BGR colour of a value on the diverging scale symmetric around 0.

    Parameters
    ----------
    value : float
    scale : float
        The magnitude drawn at full strength (−scale is :data:`NEGATIVE_COLOUR`,
        0 is :data:`ZERO_COLOUR`, +scale is :data:`POSITIVE_COLOUR`; values
        beyond are clipped).

    Returns
    -------
    tuple of int
        B, G, R; :data:`NAN_COLOUR` for a non-finite value.
    """
    if not math.isfinite(value):
        return NAN_COLOUR
    t = 0.0
    if math.isfinite(scale) and scale > 0:
        t = float(np.clip(value / scale, -1.0, 1.0))
    end = POSITIVE_COLOUR if t >= 0 else NEGATIVE_COLOUR
    b, g, r = (round(z + abs(t) * (e - z)) for z, e in zip(ZERO_COLOUR, end, strict=True))
    return b, g, r


def overlay_scale(height: int) -> int:
    """Whole upscaling factor that makes ``height`` pixels at least :data:`MIN_OVERLAY_HEIGHT`."""
    return max(1, math.ceil(MIN_OVERLAY_HEIGHT / max(1, int(height))))


def _text_width(text: str, scale: float = FONT_SCALE, thickness: int = 1) -> int:
    """Width in pixels of ``text`` as :func:`_put_text` draws it."""
    width = 0
    for j, piece in enumerate(text.split("±")):
        if j:
            width += cv2.getTextSize("+", FONT, scale, thickness)[0][0]
        if piece:
            width += cv2.getTextSize(piece, FONT, scale, thickness)[0][0]
    return width


def _put_text(
    image: np.ndarray,
    text: str,
    org: tuple[int, int],
    colour: tuple[int, int, int] = TEXT_COLOUR,
    scale: float = FONT_SCALE,
    thickness: int = 1,
) -> int:
    """Draw ``text`` and return its width (Hershey fonts are ASCII: "±" is "+" over a bar)."""
    x, y = org
    for j, piece in enumerate(text.split("±")):
        if j:
            pw = cv2.getTextSize("+", FONT, scale, thickness)[0][0]
            cv2.putText(image, "+", (x, y - 2), FONT, scale, colour, thickness, cv2.LINE_AA)
            cv2.line(image, (x + 1, y + 1), (x + pw - 1, y + 1), colour, thickness, cv2.LINE_AA)
            x += pw
        if piece:
            cv2.putText(image, piece, (x, y), FONT, scale, colour, thickness, cv2.LINE_AA)
            x += cv2.getTextSize(piece, FONT, scale, thickness)[0][0]
    return x - org[0]


def _label_point(mask: np.ndarray) -> tuple[int, int] | None:
    """The point of ``mask`` farthest from its border (inside even for a ring-shaped concept)."""
    if not mask.any():
        return None
    padded = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def _tie_tags(expl: Explanation, top: list[int], target_index: int) -> dict[int, str]:
    """For each shown concept tied with others (first target only): ``"= #3"``-style tag."""
    if target_index != 0 or not expl.ties:
        return {}
    rank_of = {i: rank for rank, i in enumerate(top, start=1)}
    tags = {}
    for group in expl.ties:
        for i in group:
            if i in rank_of:
                peers = [
                    f"#{rank_of[j]}" if j in rank_of else f"concept {j}" for j in group if j != i
                ]
                tags[i] = "= " + ", ".join(peers)
    return tags


def _legend(
    expl: Explanation,
    target_index: int,
    rows: list[tuple[int, int, tuple[int, int, int]]],
    values: np.ndarray,
    errors: np.ndarray | None,
    scale: float,
    min_height: int,
) -> np.ndarray:
    """The legend: title, colour bar labelled −max … 0 … +max, one row per shown concept."""
    label = (
        expl.labels[target_index]
        if expl.labels and target_index < len(expl.labels) and expl.labels[target_index]
        else f"class {expl.targets[target_index]}"
    )
    if len(label) > LABEL_MAX_CHARS:
        label = label[: LABEL_MAX_CHARS - 3] + "..."
    probability = float(expl.probabilities[target_index])
    p_text = f"{probability:.3g}" if math.isfinite(probability) else "n/a"
    header = [
        (f"{label}   p = {p_text}", TEXT_COLOUR),
        (f"{expl.method}: {expl.value_type} values", MUTED_COLOUR),
    ]
    tags = _tie_tags(expl, [i for _, i, _ in rows], target_index)
    cells = []  # columns: rank, value ± stderr, concept index, tie tag
    for rank, i, _ in rows:
        se = None if errors is None else float(errors[i])
        cells.append(
            [f"#{rank}", format_value(float(values[i]), se), f"concept {i}", tags.get(i, "")]
        )
    columns = [
        max((_text_width(row[c]) for row in cells), default=0) for c in range(len(CELL_GAPS))
    ]
    offsets = np.cumsum([0] + [w + gap for w, gap in zip(columns, CELL_GAPS, strict=True)]).tolist()
    footer = [("= : intervals overlap, order not established", MUTED_COLOUR)] if tags else []
    if not rows:
        footer.append(
            ("no concepts" if expl.num_concepts == 0 else "no concepts shown", TEXT_COLOUR)
        )
    bar_block = (LINE_HEIGHT + COLOUR_BAR_HEIGHT + LINE_HEIGHT) if rows else 0
    height = (
        LEGEND_PAD
        + LINE_HEIGHT * len(header)
        + bar_block
        + LEGEND_ROW * len(rows)
        + LINE_HEIGHT * len(footer)
        + LEGEND_PAD
    )
    width = max(
        [LEGEND_MIN_WIDTH, COLOUR_BAR_WIDTH + 2 * LEGEND_PAD]
        + [_text_width(t) + 2 * LEGEND_PAD for t, _ in header + footer]
        + [int(offsets[-1]) + SWATCH + SWATCH_GAP + 2 * LEGEND_PAD]
    )
    legend = np.full((max(height, min_height), width, 3), 255, dtype=np.uint8)
    y = LEGEND_PAD
    for text, colour in header:
        y += LINE_HEIGHT
        _put_text(legend, text, (LEGEND_PAD, y - 6), colour)
    if rows:
        y += LINE_HEIGHT
        _put_text(legend, "colour = signed value", (LEGEND_PAD, y - 6), MUTED_COLOUR)
        ramp = np.linspace(-1.0, 1.0, COLOUR_BAR_WIDTH)
        bar = np.array([value_colour(v, 1.0) for v in ramp], dtype=np.uint8)
        legend[y : y + COLOUR_BAR_HEIGHT, LEGEND_PAD : LEGEND_PAD + COLOUR_BAR_WIDTH] = bar[None]
        cv2.rectangle(
            legend,
            (LEGEND_PAD, y),
            (LEGEND_PAD + COLOUR_BAR_WIDTH - 1, y + COLOUR_BAR_HEIGHT - 1),
            OUTLINE_COLOUR,
            1,
        )
        y += COLOUR_BAR_HEIGHT + LINE_HEIGHT
        lo, hi = (
            (f"{-scale:+.{VALUE_DIGITS}g}", f"{scale:+.{VALUE_DIGITS}g}")
            if scale > 0
            else ("-", "+")
        )
        _put_text(legend, lo, (LEGEND_PAD, y - 6), MUTED_COLOUR)
        _put_text(
            legend,
            "0",
            (LEGEND_PAD + COLOUR_BAR_WIDTH // 2 - _text_width("0") // 2, y - 6),
            MUTED_COLOUR,
        )
        _put_text(
            legend, hi, (LEGEND_PAD + COLOUR_BAR_WIDTH - _text_width(hi), y - 6), MUTED_COLOUR
        )
    x0 = LEGEND_PAD + SWATCH + SWATCH_GAP
    for (_, _, colour), row in zip(rows, cells, strict=True):
        top = y + (LEGEND_ROW - SWATCH) // 2
        cv2.rectangle(legend, (LEGEND_PAD, top), (LEGEND_PAD + SWATCH, top + SWATCH), colour, -1)
        cv2.rectangle(
            legend, (LEGEND_PAD, top), (LEGEND_PAD + SWATCH, top + SWATCH), OUTLINE_COLOUR, 1
        )
        for c, text in enumerate(row):
            _put_text(legend, text, (x0 + int(offsets[c]), top + SWATCH - 4), CELL_COLOURS[c])
        y += LEGEND_ROW
    for text, colour in footer:
        y += LINE_HEIGHT
        _put_text(legend, text, (LEGEND_PAD, y - 6), colour)
    return legend


def render_overlay(
    expl: Explanation, top_k: int = DEFAULT_TOP_K, target_index: int = 0
) -> np.ndarray:
    """BGR overlay: the upscaled crop, its top-k concepts coloured by signed value, a legend.

    Parameters
    ----------
    expl : Explanation
        Must have a crop.
    top_k : int
        Concepts drawn (and listed in the legend, all of them).
    target_index : int
        Which target's values to draw.

    Returns
    -------
    ndarray of uint8, H×W×3
        The crop upscaled by :func:`overlay_scale` (at least :data:`MIN_OVERLAY_HEIGHT`
        tall) beside the legend; the taller of the two sets the height.

    Raises
    ------
    ExplainError
        The explanation has no crop.
    """
    if expl.crop is None:
        raise ExplainError("this explanation has no image to draw on")
    crop = cv2.cvtColor(np.ascontiguousarray(expl.crop), cv2.COLOR_RGB2BGR)
    h, w = crop.shape[:2]
    factor = overlay_scale(h)
    size = (w * factor, h * factor)
    picture = cv2.resize(crop, size, interpolation=cv2.INTER_NEAREST)
    values = expl.values_2d[target_index] if expl.num_concepts else np.zeros(0)
    stderr = expl.stderr_2d
    errors = None if stderr is None or not expl.num_concepts else stderr[target_index]
    top = expl.top(top_k, target_index) if expl.num_concepts and top_k > 0 else []
    shown = np.abs(values[top]) if top else np.zeros(0)
    shown = shown[np.isfinite(shown)]
    scale = float(shown.max()) if shown.size else 0.0
    canvas = picture.astype(np.float32)
    rows, drawn = [], []
    for rank, i in enumerate(top, start=1):
        mask = cv2.resize(
            expl.masks[i].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST
        ).astype(bool)
        colour = value_colour(float(values[i]), scale)
        canvas[mask] = (1 - OVERLAY_ALPHA) * canvas[mask] + OVERLAY_ALPHA * np.array(
            colour, dtype=np.float32
        )
        rows.append((rank, i, colour))
        drawn.append((rank, mask, colour))
    out = np.clip(canvas, 0, 255).astype(np.uint8)
    for _, mask, colour in drawn:
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, OUTLINE_COLOUR, OUTLINE_THICKNESS + 2, cv2.LINE_AA)
        cv2.drawContours(out, contours, -1, colour, OUTLINE_THICKNESS, cv2.LINE_AA)
    for rank, mask, _ in drawn:
        point = _label_point(mask)
        if point is None:
            continue
        (tw, th), _ = cv2.getTextSize(str(rank), FONT, RANK_FONT_SCALE, 2)
        org = (point[0] - tw // 2, point[1] + th // 2)
        cv2.putText(out, str(rank), org, FONT, RANK_FONT_SCALE, (0, 0, 0), 5, cv2.LINE_AA)
        cv2.putText(out, str(rank), org, FONT, RANK_FONT_SCALE, (255, 255, 255), 2, cv2.LINE_AA)
    legend = _legend(expl, target_index, rows, values, errors, scale, out.shape[0])
    if legend.shape[0] > out.shape[0]:
        pad = np.full((legend.shape[0] - out.shape[0], out.shape[1], 3), 255, dtype=np.uint8)
        out = np.concatenate([out, pad], axis=0)
    return np.concatenate([out, legend], axis=1)


def cutout(crop: np.ndarray, mask: np.ndarray, min_side: int = MIN_CUTOUT_SIDE) -> np.ndarray:
    """BGRA cut-out of one concept: its bounding box, transparent outside the mask, scaled up.

    Parameters
    ----------
    crop : ndarray of uint8, h×w×3 (RGB)
    mask : ndarray of bool, h×w
    min_side : int
        The cut-out is enlarged by a whole factor (nearest neighbour, so pixels
        stay square and the mask stays exact) until its longer side is at least
        this long.

    Returns
    -------
    ndarray of uint8, H×W×4
        1×1 and fully transparent for an empty mask.
    """
    bgra = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGRA)
    bgra[:, :, 3] = np.where(mask, 255, 0).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return bgra[:1, :1] * 0
    box = np.ascontiguousarray(bgra[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    factor = max(1, math.ceil(min_side / max(box.shape[:2])))
    if factor == 1:
        return box
    return cv2.resize(
        box, (box.shape[1] * factor, box.shape[0] * factor), interpolation=cv2.INTER_NEAREST
    )
