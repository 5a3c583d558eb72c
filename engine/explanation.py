"""The result of explaining one image: :class:`Explanation`, with save / load.

``save(folder)`` writes

``explanation.json``
    values (and standard errors), ranking, targets, probabilities, method,
    settings, value type, evaluation count, timings, provider, metrics.
``masks.npz``
    the N×h×w concept masks (bit-packed), so :meth:`Explanation.load` gives the
    whole object back.
``crop.png``
    the image the explanation lives in (the classifier's crop).
``overlay.png``
    the crop with the top-k concepts filled and outlined in a colour for their
    value (red positive, blue negative), numbered by rank, with a legend.
``concept_<rank>.png``
    RGBA cut-outs of the top-k concepts (transparent outside the mask).

JSON floats are written with Python's shortest round-trip representation, so
loaded values equal the saved ones exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .concepts import Frame
from .errors import ExplainError

STAGES = ("concepts", "evaluations", "fit", "values")
VALUE_TYPES = ("shapley", "banzhaf", "other")
JSON_NAME = "explanation.json"
MASKS_NAME = "masks.npz"
CROP_NAME = "crop.png"
OVERLAY_NAME = "overlay.png"
DEFAULT_TOP_K = 5
#: Overlay rendering.
OVERLAY_SCALE = 2
OVERLAY_ALPHA = 0.45
LEGEND_WIDTH = 230
LEGEND_ROW = 26
FONT = cv2.FONT_HERSHEY_SIMPLEX


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
        for stage in STAGES:
            self.timings.setdefault(stage, 0.0)

    # ------------------------------------------------------------------ views
    @property
    def num_concepts(self) -> int:
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
    def ranking(self) -> np.ndarray:
        """Concept indices by decreasing value (N, or T×N); ties keep index order."""
        return np.argsort(-self.values, axis=-1, kind="stable")

    def top(self, k: int = DEFAULT_TOP_K, target_index: int = 0) -> list[int]:
        """The k best concepts for the ``target_index``-th target."""
        return [int(i) for i in np.argsort(-self.values_2d[target_index], kind="stable")[:k]]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the masks and the image, JSON-ready."""
        return {
            "method": self.method,
            "value_type": self.value_type,
            "targets": [int(t) for t in self.targets],
            "labels": self.labels,
            "probabilities": [float(p) for p in self.probabilities],
            "num_concepts": self.num_concepts,
            "values": self.values.tolist(),
            "values_shape": list(self.values.shape),
            "stderr": None if self.stderr is None else self.stderr.tolist(),
            "ranking": self.ranking.tolist(),
            "concept_areas": self.masks.sum(axis=(1, 2)).tolist() if self.masks.ndim == 3 else [],
            "num_evaluations": int(self.num_evaluations),
            "timings": {k: float(v) for k, v in self.timings.items()},
            "provider": self.provider,
            "settings": self.settings,
            "frame": None if self.frame is None else self.frame.to_dict(),
            "info": self.info,
            "masks_file": MASKS_NAME,
            "crop_file": CROP_NAME if self.crop is not None else None,
        }

    # ------------------------------------------------------------------ files
    def save(self, folder: str | os.PathLike, top_k: int = DEFAULT_TOP_K) -> Path:
        """Write the JSON, masks, crop, overlay and top-k cut-outs into ``folder``.

        Returns the path of ``explanation.json``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / MASKS_NAME, packed=np.packbits(self.masks.reshape(-1)),
                            shape=np.array(self.masks.shape, dtype=np.int64))
        if self.crop is not None:
            _write_png(folder / CROP_NAME, cv2.cvtColor(self.crop, cv2.COLOR_RGB2BGR))
            for t in range(len(self.targets)):
                name = OVERLAY_NAME if t == 0 else f"overlay_target{t}.png"
                _write_png(folder / name, render_overlay(self, top_k=top_k, target_index=t))
            for rank, i in enumerate(self.top(top_k), start=1):
                _write_png(folder / f"concept_{rank}.png", cutout(self.crop, self.masks[i]))
        path = folder / JSON_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=_json_default))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, source: str | os.PathLike) -> Explanation:
        """Read an explanation written by :meth:`save` (its folder or its JSON file)."""
        path = Path(source)
        if path.is_dir():
            path = path / JSON_NAME
        if not path.is_file():
            raise ExplainError(f"{path}: no explanation.json there; give a folder written by Explanation.save")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ExplainError(f"{path}: not a readable explanation JSON ({exc})") from exc
        folder = path.parent
        masks_path = folder / data.get("masks_file", MASKS_NAME)
        n = int(data["num_concepts"])
        if masks_path.is_file():
            with np.load(masks_path) as z:
                shape = tuple(int(s) for s in z["shape"])
                masks = np.unpackbits(z["packed"], count=int(np.prod(shape))).reshape(shape).astype(bool)
        else:
            masks = np.zeros((n, 0, 0), dtype=bool)
        crop = None
        if data.get("crop_file") and (folder / data["crop_file"]).is_file():
            crop = cv2.cvtColor(cv2.imread(str(folder / data["crop_file"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        shape = tuple(int(v) for v in data.get("values_shape", [n]))
        values = np.array(data["values"], dtype=np.float64).reshape(shape)
        stderr = None if data.get("stderr") is None else np.array(data["stderr"], dtype=np.float64).reshape(values.shape)
        return cls(values=values, masks=masks, targets=list(data["targets"]), probabilities=list(data["probabilities"]),
                   method=data["method"], value_type=data["value_type"], settings=data.get("settings", {}),
                   num_evaluations=int(data.get("num_evaluations", 0)), timings=data.get("timings", {}),
                   stderr=stderr, labels=data.get("labels"), provider=data.get("provider"), crop=crop,
                   frame=Frame.from_dict(data["frame"]) if data.get("frame") else None,
                   info=data.get("info", {}))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ExplainError(f"{path}: opencv could not encode the PNG")
    buf.tofile(str(path))


def value_colour(value: float, scale: float) -> tuple[int, int, int]:
    """BGR colour of a value: red for positive, blue for negative, paler when small."""
    t = 0.0 if scale <= 0 else float(np.clip(abs(value) / scale, 0.0, 1.0))
    strong = 255
    weak = round(230 * (1.0 - t))
    return (weak, weak, strong) if value >= 0 else (strong, weak, weak)


def render_overlay(expl: Explanation, top_k: int = DEFAULT_TOP_K, target_index: int = 0) -> np.ndarray:
    """BGR overlay image: the crop with the top-k concepts coloured by value, plus a legend."""
    if expl.crop is None:
        raise ExplainError("this explanation has no image to draw on")
    crop = cv2.cvtColor(np.ascontiguousarray(expl.crop), cv2.COLOR_RGB2BGR)
    h, w = crop.shape[:2]
    big = cv2.resize(crop, (w * OVERLAY_SCALE, h * OVERLAY_SCALE), interpolation=cv2.INTER_NEAREST)
    values = expl.values_2d[target_index] if expl.num_concepts else np.zeros(0)
    top = expl.top(top_k, target_index) if expl.num_concepts else []
    scale = float(np.abs(values[top]).max()) if top else 0.0
    canvas = big.astype(np.float32)
    outlines = []
    for rank, i in enumerate(top, start=1):
        mask = cv2.resize(expl.masks[i].astype(np.uint8), (w * OVERLAY_SCALE, h * OVERLAY_SCALE),
                          interpolation=cv2.INTER_NEAREST).astype(bool)
        colour = np.array(value_colour(values[i], scale), dtype=np.float32)
        canvas[mask] = (1 - OVERLAY_ALPHA) * canvas[mask] + OVERLAY_ALPHA * colour
        outlines.append((rank, i, mask, value_colour(values[i], scale)))
    out = np.clip(canvas, 0, 255).astype(np.uint8)
    for rank, _, mask, colour in outlines:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, 2)
        ys, xs = np.nonzero(mask)
        if len(xs):
            cx, cy = int(xs.mean()), int(ys.mean())
            cv2.putText(out, str(rank), (cx - 6, cy + 6), FONT, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, str(rank), (cx - 6, cy + 6), FONT, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    legend = np.full((out.shape[0], LEGEND_WIDTH, 3), 255, dtype=np.uint8)
    label = expl.labels[target_index] if expl.labels and expl.labels[target_index] else f"class {expl.targets[target_index]}"
    lines = [f"{label}  p={expl.probabilities[target_index]:.3f}", f"{expl.method} ({expl.value_type})"]
    for j, text in enumerate(lines):
        cv2.putText(legend, text[:34], (6, 18 + j * 18), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    y0 = 18 + len(lines) * 18 + 8
    for rank, i, _, colour in outlines:
        y = y0 + (rank - 1) * LEGEND_ROW
        if y + LEGEND_ROW > legend.shape[0]:
            break
        cv2.rectangle(legend, (6, y), (26, y + 18), colour, -1)
        cv2.rectangle(legend, (6, y), (26, y + 18), (0, 0, 0), 1)
        cv2.putText(legend, f"#{rank} concept {i}: {values[i]:+.4f}", (32, y + 14), FONT, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
    if not outlines:
        cv2.putText(legend, "no concepts", (6, y0 + 14), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([out, legend], axis=1)


def cutout(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """BGRA cut-out of one concept, cropped to its bounding box (transparent outside the mask)."""
    bgra = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGRA)
    bgra[:, :, 3] = np.where(mask, 255, 0).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return bgra[:1, :1] * 0
    return np.ascontiguousarray(bgra[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
