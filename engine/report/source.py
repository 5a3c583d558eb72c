"""A finished run, read for a report: a Parquet dataset run or a folder of explanation folders.

:func:`read_run` gives one :class:`ReportRow` per table row (image × explained
class), failed rows included, in a stable order (image, then target). A row can
rebuild its :class:`~eac.engine.explanation.Explanation` (:meth:`ReportRow.explanation`):
from the row itself for a Parquet run (values, masks as RLE, the frame) with the
image read again from the row's path — the table does not hold the image —, or
from the saved folder. When the image is gone or has changed since the run, the
row says so (:attr:`ReportRow.image_problem`) and the pictures are drawn on grey.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...kernels.rle import decode_masks
from ..concepts import Frame
from ..dataset import STATUS_FAILED, STATUS_OK, SUMMARY_NAME, TABLE_NAME, read_table
from ..errors import ConfigError, EacError
from ..explanation import JSON_NAME, Explanation
from ..images import apply_frame, load_image
from ..manifest import file_sha256

KIND_PARQUET = "parquet"
KIND_FOLDERS = "folders"
#: Grey of the canvas the concepts are drawn on when the image cannot be read.
MISSING_IMAGE_GREY = 200


@dataclass
class ReportRow:
    """One row of the report's table: one image × one explained class (or one failed image).

    Attributes
    ----------
    image : str
        The image's path as the run recorded it (or the folder's name).
    status : {"ok", "failed"}
    error : str or None
        The one-line reason of a failure.
    target_index : int
        Which of the image's explained classes (0: the first, normally the prediction).
    target : int or None
    label : str or None
    probability : float or None
    num_concepts : int
    top_concept : int or None
        The concept ranked first, its value and standard error.
    top_value, top_stderr : float or None
    num_evaluations : int or None
    stop_reason : str or None
    tied : int or None
        Concepts tied with another (first target only; None when not estimated).
    method : str or None
    """

    image: str
    status: str
    error: str | None = None
    target_index: int = 0
    target: int | None = None
    label: str | None = None
    probability: float | None = None
    num_concepts: int = 0
    top_concept: int | None = None
    top_value: float | None = None
    top_stderr: float | None = None
    num_evaluations: int | None = None
    stop_reason: str | None = None
    tied: int | None = None
    method: str | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False)
    folder: Path | None = None
    image_problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def class_name(self) -> str:
        """The class's label, or ``"class <index>"``."""
        if self.label:
            return self.label
        return "" if self.target is None else f"class {self.target}"

    def explanation(self) -> Explanation:
        """The row's explanation, with a crop (the image, or grey when it cannot be read: see :attr:`image_problem`).

        Raises
        ------
        EacError
            The saved folder or the row cannot be read.
        """
        if self.folder is not None:
            expl = Explanation.load(self.folder)
            if expl.crop is None:
                self.image_problem = f"{self.folder}: no crop.png saved; concepts drawn on grey"
                expl.crop = _grey(expl.masks.shape[1:])
            return _one_target(expl, self.target_index)
        return self._from_record()

    def _from_record(self) -> Explanation:
        row = self.record
        frame = Frame.from_dict(json.loads(row["frame"])) if row.get("frame") else None
        hw = frame.hw if frame is not None else None
        masks = decode_masks(row.get("masks") or [], hw)
        crop = self._crop(frame, masks.shape[1:])
        info = json.loads(row["info"]) if row.get("info") else {}
        stderr = row.get("stderr")
        return Explanation(
            values=_floats(row.get("values") or []), masks=masks, targets=[int(row["target"])],
            probabilities=[_nan_if_none(row.get("probability"))], method=str(row.get("method")),
            value_type=str(row.get("value_type")), num_evaluations=int(row.get("num_evaluations") or 0),
            stderr=None if stderr is None else _floats(stderr), labels=[row["label"]] if row.get("label") else None,
            provider=row.get("provider"), crop=crop, frame=frame, info=info,
            ties=row.get("ties") if self.target_index == 0 else None,
        )

    def _crop(self, frame: Frame | None, hw: tuple[int, int]) -> np.ndarray:
        """The image's crop, read again from its path; grey (and :attr:`image_problem` set) when it cannot be."""
        path = Path(self.image)
        if not path.is_file():
            self.image_problem = f"{self.image}: image not found (the table keeps masks and values, not the image)"
            return _grey(hw)
        expected = self.record.get("image_sha256")
        if expected and file_sha256(path) != expected:
            self.image_problem = f"{self.image}: the file changed since the run (SHA-256 differs); concepts on grey"
            return _grey(hw)
        try:
            crop = apply_frame(load_image(path), frame) if frame is not None else load_image(path)
        except EacError as exc:
            self.image_problem = f"{self.image}: cannot read the image ({exc})"
            return _grey(hw)
        if crop.shape[:2] != tuple(hw):
            self.image_problem = f"{self.image}: the image does not match the run's frame; concepts on grey"
            return _grey(hw)
        return crop


@dataclass
class Run:
    """A run read for a report: its rows (table order) and what else is known about it."""

    folder: Path
    kind: str
    rows: list[ReportRow]
    summary: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return len({row.image for row in self.rows})

    @property
    def failures(self) -> list[ReportRow]:
        return [row for row in self.rows if not row.ok]


def read_run(folder: str | os.PathLike) -> Run:
    """Read a run folder: ``explanations.parquet/`` (a dataset run) or explanation folders.

    Parameters
    ----------
    folder : path-like
        ``OUT`` of ``eac explain ... --format parquet --out OUT``, or of ``eac explain DIR --out OUT`` (one
        folder per image), or one explanation folder.

    Returns
    -------
    Run

    Raises
    ------
    ConfigError
        No such folder, nothing a report can be made of there, or a Parquet run without pyarrow.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder; give the --out folder of an `eac explain` run")
    if (folder / TABLE_NAME).is_dir():
        return _read_parquet(folder)
    return _read_folders(folder)


def _read_parquet(folder: Path) -> Run:
    table = read_table(folder).to_pylist()
    rows = [_parquet_row(r) for r in sorted(table, key=lambda r: (r["image"] or "", r["target_index"] or 0))]
    summary = None
    notes = []
    if (folder / SUMMARY_NAME).is_file():
        try:
            summary = json.loads((folder / SUMMARY_NAME).read_text())
        except (OSError, ValueError) as exc:
            notes.append(f"{SUMMARY_NAME} is unreadable ({exc}); counts come from the table")
    hashes = {r["settings_hash"] for r in table}
    if len(hashes) > 1:
        notes.append(f"the table holds rows of {len(hashes)} different settings (runs with other options)")
    return Run(folder, KIND_PARQUET, rows, summary, notes)


def _parquet_row(r: dict[str, Any]) -> ReportRow:
    row = ReportRow(image=str(r["image"]), status=str(r["status"]), error=r.get("error"),
                    target_index=int(r.get("target_index") or 0), target=r.get("target"), label=r.get("label"),
                    probability=r.get("probability"), method=r.get("method"), record=r)
    if row.ok:
        info = json.loads(r["info"]) if r.get("info") else {}
        _fill(row, r.get("values") or [], r.get("stderr"), r.get("num_evaluations"), info.get("stop_reason"),
              r.get("ties") if row.target_index == 0 else None, int(r.get("num_concepts") or 0))
    return row


def _read_folders(folder: Path) -> Run:
    candidates = [folder] if (folder / JSON_NAME).is_file() else sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / JSON_NAME).is_file())
    if not candidates:
        raise ConfigError(f"{folder}: neither {TABLE_NAME}/ nor explanation folders ({JSON_NAME}) there; give the "
                          "--out folder of an `eac explain` run")
    rows: list[ReportRow] = []
    for path in candidates:
        try:
            data = json.loads((path / JSON_NAME).read_text())
            targets = list(data["targets"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            rows.append(ReportRow(image=path.name, status=STATUS_FAILED, error=f"unreadable {JSON_NAME} ({exc})"))
            continue
        image = str((data.get("info") or {}).get("image") or path.name)
        values = data.get("values") or []
        stderr = data.get("stderr")
        for t, target in enumerate(targets):
            row = ReportRow(image=image, status=STATUS_OK, target_index=t, target=int(target),
                            label=(data.get("labels") or [None] * len(targets))[t],
                            probability=(data.get("probabilities") or [None] * len(targets))[t],
                            method=data.get("method"), folder=path)
            per_target = values[t] if len(targets) > 1 else values
            se = None if stderr is None else (stderr[t] if len(targets) > 1 else stderr)
            _fill(row, per_target, se, data.get("num_evaluations"), (data.get("info") or {}).get("stop_reason"),
                  data.get("ties") if t == 0 else None, int(data.get("num_concepts") or 0))
            rows.append(row)
    notes = ["explanation folders record no failures (eac explain prints them); only unreadable folders are listed"]
    return Run(folder, KIND_FOLDERS, rows, None, notes)


def _fill(row: ReportRow, values: list[Any], stderr: list[Any] | None, evaluations: Any, stop: Any,
          ties: list[list[int]] | None, num_concepts: int) -> None:
    """Set a row's summary columns from its values."""
    row.num_concepts = num_concepts
    row.num_evaluations = None if evaluations is None else int(evaluations)
    row.stop_reason = None if stop is None else str(stop)
    row.tied = None if ties is None else len({int(i) for group in ties for i in group})
    finite = [(float(v), i) for i, v in enumerate(values) if v is not None and math.isfinite(float(v))]
    if finite:
        value, i = max(finite, key=lambda vi: (vi[0], -vi[1]))  # the first of the ranking (ties: lower index)
        row.top_concept, row.top_value = i, value
        se = None if stderr is None else stderr[i]
        row.top_stderr = None if se is None or not math.isfinite(float(se)) else float(se)


def _one_target(expl: Explanation, t: int) -> Explanation:
    """The explanation of its t-th target alone."""
    if len(expl.targets) == 1:
        return expl
    stderr = expl.stderr_2d
    return Explanation(values=expl.values_2d[t], masks=expl.masks, targets=[expl.targets[t]],
                       probabilities=[expl.probabilities[t]], method=expl.method, value_type=expl.value_type,
                       settings=expl.settings, num_evaluations=expl.num_evaluations, timings=expl.timings,
                       stderr=None if stderr is None else stderr[t],
                       labels=[expl.labels[t]] if expl.labels else None, provider=expl.provider, crop=expl.crop,
                       frame=expl.frame, info=expl.info, ties=expl.ties if t == 0 else None)


def _grey(hw: tuple[int, ...]) -> np.ndarray:
    h, w = (int(hw[0]), int(hw[1])) if len(hw) == 2 and min(hw) > 0 else (1, 1)
    return np.full((h, w, 3), MISSING_IMAGE_GREY, dtype=np.uint8)


def _floats(values: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)
