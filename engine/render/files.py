"""The picture files of a saved explanation, written into its folder.

``overlay.png``
    :func:`~eac.engine.render.overlay.render_overlay`, one panel per target.
``heatmap.png``
    :func:`~eac.engine.render.heatmap.render_heatmap`, one panel per target.
``values.png``
    :func:`~eac.engine.render.values.render_values_figure`, only when matplotlib
    (the ``plot`` extra) is installed.
``top<rank>_concept<index>.png``
    :func:`~eac.engine.render.cutout.cutout` of each top concept (first target).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import ExplainError
from ..explanation import Explanation
from .cutout import cutout
from .heatmap import render_heatmap
from .overlay import render_overlay
from .values import plot_available, render_values_figure

OVERLAY_NAME = "overlay.png"
HEATMAP_NAME = "heatmap.png"
VALUES_NAME = "values.png"
#: Cut-out of a top concept: its rank (1-based) and its index, the number the ranking, the JSON and the overlay
#: give it (``top1_concept2.png``: concept 2, ranked first).
CUTOUT_PATTERN = "top{rank}_concept{index}.png"


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a BGR(A) image as PNG (any path opencv can write through numpy)."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ExplainError(f"{path}: opencv could not encode the PNG")
    buf.tofile(str(path))


def write_pictures(expl: Explanation, folder: Path, top_k: int) -> list[str]:
    """Draw an explanation's pictures into ``folder`` (which exists).

    Parameters
    ----------
    expl : Explanation
        Nothing is drawn without a crop.
    folder : Path
    top_k : int
        Concepts drawn on the overlay and the values figure's top, and cut out.

    Returns
    -------
    list of str
        The file names written.
    """
    if expl.crop is None:
        return []
    pictures = {OVERLAY_NAME: render_overlay(expl, top_k=top_k), HEATMAP_NAME: render_heatmap(expl)}
    if plot_available():
        pictures[VALUES_NAME] = render_values_figure(expl, top_k=top_k)
    for rank, i in enumerate(expl.top(top_k), start=1):
        pictures[CUTOUT_PATTERN.format(rank=rank, index=i)] = cutout(expl.crop, expl.masks[i])
    for name, image in pictures.items():
        write_png(folder / name, image)
    return list(pictures)
