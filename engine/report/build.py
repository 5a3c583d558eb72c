"""``write_report``: a run folder → ``OUT/report.html`` and its pictures in ``OUT/report_files/``.

For every explained row: the overlay (a PNG the page links to) and a JPEG
thumbnail; across the run, cut-outs of the concepts with the largest values.
The pictures' folder is written atomically (:func:`eac.engine.atomic.write_folder`),
then the page (:func:`eac.engine.atomic.write_file`), so a report is replaced
whole and an interrupted one leaves the previous report readable.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from ..atomic import check_destination, write_file, write_folder
from ..errors import ConfigError, EacError
from ..explanation import DEFAULT_TOP_K
from ..render.cutout import cutout
from ..render.overlay import render_overlay, render_overlay_image
from ..render.text import format_value
from .page import Card, PageData, page_html, row_cells
from .source import ReportRow, Run, read_run

REPORT_NAME = "report.html"
FILES_NAME = "report_files"
#: Written into the pictures' folder: the report's data (counts and rows), and the mark of a report folder.
DATA_NAME = "report.json"
#: Rows shown per page of the table (the page's script pages through the rest).
DEFAULT_PAGE_ROWS = 100
#: Thumbnails per class in the galleries (the table has them all).
DEFAULT_GALLERY_PER_CLASS = 48
#: Cut-outs of the most influential concepts, and how many of each image's top concepts compete for them.
DEFAULT_CONCEPTS = 24
CONCEPTS_PER_IMAGE = 3
#: Thumbnails: longer side in pixels, JPEG quality (small files for pages of thousands of images).
THUMB_SIDE = 200
JPEG_QUALITY = 82
#: Full overlays are JPEG too (a photograph as PNG is several times larger); quality high enough for the legend.
OVERLAY_JPEG_QUALITY = 90


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`write_report` wrote."""

    page: Path
    images: int
    rows: int
    failed: int
    problems: int


def write_report(run_folder: str | os.PathLike, *, top_k: int = DEFAULT_TOP_K, page_rows: int = DEFAULT_PAGE_ROWS,
                 gallery_per_class: int = DEFAULT_GALLERY_PER_CLASS, concepts: int = DEFAULT_CONCEPTS,
                 progress: Callable[[int, int], None] | None = None) -> ReportSummary:
    """Write ``report.html`` (and ``report_files/``) into a run folder.

    Parameters
    ----------
    run_folder : path-like
        A Parquet dataset run's ``OUT``, or a folder of explanation folders
        (:func:`~eac.engine.report.source.read_run`).
    top_k : int
        Concepts drawn on each overlay.
    page_rows : int
        Table rows per page.
    gallery_per_class : int
        Thumbnails shown per class (all rows stay in the table).
    concepts : int
        Cut-outs of the most influential concepts.
    progress : callable(done, total), optional
        Called after each row.

    Returns
    -------
    ReportSummary

    Raises
    ------
    ConfigError
        A bad setting, or a folder with nothing to report; see also :func:`read_run`.
    EacError
        The report cannot be written there.
    """
    for name, value, least in (("top_k", top_k, 0), ("page_rows", page_rows, 1),
                               ("gallery_per_class", gallery_per_class, 0), ("concepts", concepts, 0)):
        if value < least:
            raise ConfigError(f"{name} must be at least {least}, got {value}")
    run = read_run(run_folder)
    folder = Path(os.path.abspath(run.folder))
    files = check_destination(folder / FILES_NAME, DATA_NAME, what="report", error=ConfigError)
    from ..manifest import eac_version

    data = PageData(title=f"eac report: {folder.name}", run=run, page_rows=page_rows, version=eac_version(),
                    created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    def write(tmp: Path) -> None:
        _pictures(run, data, tmp, top_k, concepts, progress)
        data.classes = _galleries(run, data, gallery_per_class)
        counts = {"images": run.images, "rows": len(run.rows), "failed": len({r.image for r in run.failures}),
                  "image_problems": len(data.problems)}
        rows = [row_cells(row) for row in run.rows]
        (tmp / DATA_NAME).write_text(json.dumps({"counts": counts, "rows": rows}, indent=1, allow_nan=False))

    write_folder(files, write, what="report", error=ConfigError)
    page = folder / REPORT_NAME
    text = page_html(data)
    try:
        write_file(page, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{page}: cannot write the report ({exc.strerror or exc})") from exc
    return ReportSummary(page, run.images, len(run.rows), len({r.image for r in run.failures}), len(data.problems))


def _pictures(run: Run, data: PageData, folder: Path, top_k: int, concepts: int,
              progress: Callable[[int, int], None] | None) -> None:
    """Overlays and thumbnails of every explained row; the best concepts' cut-outs."""
    best: list[tuple[float, int, int, bytes, list[str], int, int]] = []  # a min-heap of (value, row, rank, ...)
    names = short_names([row.image for row in run.rows])
    for k, row in enumerate(run.rows):
        if row.ok:
            _row_pictures(row, names[row.image], k, data, folder, top_k, concepts, best)
        if progress is not None:
            progress(k + 1, len(run.rows))
    for j, (_, _, _, png, caption, w, h) in enumerate(sorted(best, reverse=True)):
        name = f"c{j}.png"
        (folder / name).write_bytes(png)
        data.concepts.append(Card(f"{FILES_NAME}/{name}", f"{FILES_NAME}/{name}", caption, w, h))


def short_names(paths: list[str]) -> dict[str, str]:
    """Each image path's shortest ending (whole path components) that no other path of the run ends with.

    Captions name images by it: ``s1.png`` while it is unique, ``imgs/s1.png`` and ``imgs2/s1.png`` when two
    folders hold an ``s1.png``.

    Examples
    --------
    >>> short_names(["a/s1.png", "b/s1.png", "a/s2.png"])
    {'a/s1.png': 'a/s1.png', 'b/s1.png': 'b/s1.png', 'a/s2.png': 's2.png'}
    """
    parts = {p: Path(p).parts or (p,) for p in dict.fromkeys(paths)}  # first-seen order
    out = {}
    for path, own in parts.items():
        for depth in range(1, len(own) + 1):
            tail = own[-depth:]
            if not any(other != path and theirs[-depth:] == tail for other, theirs in parts.items()):
                break
        out[path] = str(Path(*tail))
    return out


def _row_pictures(row: ReportRow, name: str, k: int, data: PageData, folder: Path, top_k: int, concepts: int,
                  best: list) -> None:
    try:
        expl = row.explanation()
    except EacError as exc:
        row.image_problem = f"cannot read the explanation: {exc}"
        data.problems.append((row.image, row.image_problem))
        return
    if row.image_problem:
        data.problems.append((row.image, row.image_problem))
    full = f"o{k}.jpg"
    _write_jpeg(folder / full, render_overlay(expl, top_k=top_k), OVERLAY_JPEG_QUALITY)
    picture = render_overlay_image(expl, top_k=top_k)
    scale = THUMB_SIDE / max(picture.shape[:2])
    size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
    _write_jpeg(folder / f"t{k}.jpg", cv2.resize(picture, size, interpolation=cv2.INTER_AREA), JPEG_QUALITY)
    p = "" if row.probability is None else f"p = {row.probability:.3g}, "
    top = "" if row.top_value is None else f"top {format_value(row.top_value, row.top_stderr)}"
    data.thumbs[k] = Card(f"{FILES_NAME}/t{k}.jpg", f"{FILES_NAME}/{full}", [name, f"{p}{top}"], *size)
    if row.image_problem or not concepts:
        return
    values = expl.values_2d[0]
    stderr = expl.stderr_2d
    for rank, i in enumerate(expl.top(CONCEPTS_PER_IMAGE), start=1):
        value = float(values[i])
        if len(best) >= concepts and value <= best[0][0]:
            continue
        cut = cutout(expl.crop, expl.masks[i])
        ok, buf = cv2.imencode(".png", cut)
        if not ok:
            continue
        se = None if stderr is None else float(stderr[0][i])
        caption = [format_value(value, se), f"{row.class_name}: #{rank} of {name}"]
        entry = (value, -k, -rank, buf.tobytes(), caption, cut.shape[1], cut.shape[0])
        if len(best) < concepts:
            heapq.heappush(best, entry)
        else:
            heapq.heapreplace(best, entry)


def _write_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ConfigError(f"{path}: opencv could not encode the JPEG")
    buf.tofile(str(path))


def _galleries(run: Run, data: PageData, per_class: int) -> list[tuple[str, list[Card], int]]:
    """Per class (most rows first): up to ``per_class`` thumbnails and the class's row count."""
    groups: dict[str, list[int]] = {}
    for k, row in enumerate(run.rows):
        if row.ok:
            groups.setdefault(row.class_name, []).append(k)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [(name, [data.thumbs[k] for k in ks if k in data.thumbs][:per_class], len(ks)) for name, ks in ordered]
