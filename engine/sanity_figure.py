"""Figures of a sanity check (:mod:`eac.engine.sanity`): the similarity curve and overlay thumbnails.

Needs matplotlib (the ``plot`` extra), imported inside the functions; without it
:func:`plot_missing_note` says in one line what the extra adds. The figures are
drawn on :class:`matplotlib.figure.Figure` objects (no pyplot state), so they are
safe to make from several threads.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from .distribution import install_hint
from .render.scale import value_colour

#: File names written in the output folder.
CURVE_FILE = "sanity.png"
THUMBNAILS_FILE = "sanity-thumbnails.png"
#: Share of a concept's colour in a thumbnail pixel (the rest is the image).
THUMBNAIL_ALPHA = 0.65
#: Figure sizes in inches (width per column / height per row of thumbnails) and resolution.
CURVE_SIZE = (7.0, 4.2)
THUMB_INCHES = 1.6
FIGURE_DPI = 110
#: Longest layer name on the independent panel's axis.
AXIS_LABEL_CHARS = 18


def plot_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def plot_missing_note() -> str:
    """The one line printed instead of the figures when matplotlib is missing."""
    return (f"figures skipped: matplotlib is not installed; {install_hint('plot')} adds the curve of similarity "
            f"against randomised layers ({CURVE_FILE}) and overlay thumbnails per step ({THUMBNAILS_FILE})")


def concept_thumbnail(crop: np.ndarray, masks: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The crop with each concept coloured by its value (diverging scale, its own largest |value| at full strength).

    Parameters
    ----------
    crop : ndarray of uint8, h×w×3 RGB
    masks : ndarray of bool, N×h×w
    values : ndarray of float, N

    Returns
    -------
    ndarray of uint8, h×w×3 RGB
        Concepts drawn in increasing |value|, so where they overlap the stronger one shows.
    """
    values = np.asarray(values, np.float64)
    finite = np.abs(values[np.isfinite(values)])
    scale = float(finite.max()) if finite.size else 0.0
    out = np.asarray(crop, np.float64).copy()
    for i in np.argsort(np.abs(np.nan_to_num(values)), kind="stable"):
        b, g, r = value_colour(float(values[i]), scale)
        mask = np.asarray(masks[i], bool)
        out[mask] = (1 - THUMBNAIL_ALPHA) * out[mask] + THUMBNAIL_ALPHA * np.array([r, g, b], np.float64)
    return np.clip(out, 0, 255).astype(np.uint8)


def write_figures(report: Any, crop: np.ndarray, masks: np.ndarray, out: str | Path) -> list[Path]:
    """Write the curve and the thumbnails of ``report`` into the folder ``out``.

    Parameters
    ----------
    report : SanityReport
    crop : ndarray of uint8, h×w×3
    masks : ndarray of bool, N×h×w
    out : path-like
        An existing folder.

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(out)
    written = [_curve(report, out / CURVE_FILE)]
    if report.indices("cascading") or report.indices("independent"):
        written.append(_thumbnails(report, crop, masks, out / THUMBNAILS_FILE))
    return written


def _curve(report: Any, path: Path) -> Path:
    from matplotlib.figure import Figure

    independent = report.indices("independent")
    cascading = report.indices("cascading")
    panels = 1 + bool(independent and cascading)
    fig = Figure(figsize=(CURVE_SIZE[0] * panels, CURVE_SIZE[1]), dpi=FIGURE_DPI, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    rerun = report.indices("rerun")
    if cascading or not independent:
        ax = axes[0]
        x = [0] + [report.steps[i].randomised for i in cascading]
        for method in report.methods:
            line = ax.plot(x, [1.0, *report.curve(method)], marker="o", label=method)[0]
            if rerun:
                ax.plot([0], [report.rerun_similarity(method)], marker="x", color=line.get_color(), linestyle="none")
        ax.set_xlabel("layers randomised (cascading, from the head down)")
        ax.set_ylabel("Spearman ρ with the original values")
        ax.set_title("cascading randomisation (× at 0: rerun, another seed)", fontsize="medium")
        _threshold(ax, report)
        ax.legend(fontsize="small")
    if independent:
        ax = axes[-1]
        names = [report.steps[i].layers[0] for i in independent]
        positions = np.arange(len(independent))
        for method in report.methods:
            ax.plot(positions, report.curve(method, "independent"), marker="o", linestyle=":", label=method)
        ax.set_xticks(positions, [_tail(n) for n in names], rotation=45, ha="right", fontsize="x-small")
        ax.set_xlabel("the one layer randomised (head first)")
        ax.set_ylabel("Spearman ρ with the original values")
        ax.set_title("independent randomisation", fontsize="medium")
        _threshold(ax, report)
        if not cascading:
            ax.legend(fontsize="small")
    fig.savefig(path)
    return path


def _threshold(ax: Any, report: Any) -> None:
    ax.axhline(report.critical, color="grey", linestyle="--", linewidth=1,
               label=f"pass below {report.critical:.2f}")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_ylim(-1.05, 1.05)


def _tail(name: str) -> str:
    return name if len(name) <= AXIS_LABEL_CHARS else "…" + name[-(AXIS_LABEL_CHARS - 1):]


def _thumbnails(report: Any, crop: np.ndarray, masks: np.ndarray, path: Path) -> Path:
    from matplotlib.figure import Figure

    columns = report.indices("cascading") or report.indices("independent")
    rows = len(report.methods)
    fig = Figure(figsize=(THUMB_INCHES * (len(columns) + 1), THUMB_INCHES * rows + 0.4), dpi=FIGURE_DPI,
                 layout="constrained")
    axes = fig.subplots(rows, len(columns) + 1, squeeze=False)
    for r, method in enumerate(report.methods):
        cells = [("original", report.original[method])]
        for i in columns:
            step, result = report.steps[i], report.results[(method, i)]
            where = step.randomised if step.kind == "cascading" else _tail(step.layers[0])
            cells.append((f"{where}: ρ={result.similarity:.2f}", result.values))
        for c, (title, values) in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(concept_thumbnail(crop, masks, values))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize="x-small")
            if c == 0:
                ax.set_ylabel(method, fontsize="small")
    fig.suptitle("concept values per step (each thumbnail on its own scale; red +, blue −)", fontsize="small")
    fig.savefig(path)
    return path


__all__ = ["concept_thumbnail", "plot_available", "plot_missing_note", "write_figures"]
