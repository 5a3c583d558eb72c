"""The heat map: every concept's value painted over the image, on the overlay's colour scale.

Concepts may overlap: they are painted largest first, so a pixel shows the
value of the smallest concept covering it and every concept that is not wholly
covered by smaller ones stays visible. Pixels no concept covers stay grey.
Thin dark lines separate the painted regions.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import ExplainError
from ..explanation import Explanation
from .layout import blank, compose, display_size, resize_image, resize_nearest, side_by_side
from .scale import OUTLINE_COLOUR, colour_scale, draw_colour_bar, value_colours
from .text import (
    LINE_HEIGHT,
    MUTED_COLOUR,
    TEXT_COLOUR,
    TITLE_SCALE,
    TITLE_THICKNESS,
    fit_text,
    put_text,
    target_title,
)

#: Opacity of the values' colours over the (grey) image: the image's structure stays visible below.
HEAT_ALPHA = 0.7
#: The image under the colours is grey, mixed this much towards white, so hues read as values only.
GREY_LIGHTEN = 0.15
#: Legend beside the heat map: width and inner padding.
LEGEND_WIDTH = 300
LEGEND_PAD = 12
#: Value of a pixel no concept covers, in the concept-index map.
UNCOVERED = -1


def concept_map(masks: np.ndarray) -> np.ndarray:
    """Which concept each pixel shows: concepts painted largest first, so the smallest one covering it.

    Parameters
    ----------
    masks : ndarray of bool, N×h×w

    Returns
    -------
    ndarray of int64, h×w
        Concept index per pixel, :data:`UNCOVERED` where no concept is.
    """
    index = np.full(masks.shape[1:], UNCOVERED, dtype=np.int64)
    areas = masks.reshape(masks.shape[0], -1).sum(axis=1)
    for i in np.argsort(-areas, kind="stable"):
        index[masks[i]] = i
    return index


def render_heatmap(expl: Explanation, target_index: int | None = None) -> np.ndarray:
    """BGR heat map: one panel per target (or the one asked for), every concept painted by its value.

    Parameters
    ----------
    expl : Explanation
        Must have a crop.
    target_index : int or None
        Only this target; ``None``: every target, one panel each.

    Returns
    -------
    ndarray of uint8, H×W×3
        Bounded like the overlay (:func:`eac.engine.render.layout.compose`).

    Raises
    ------
    ExplainError
        No crop, or a target index out of range.
    """
    if expl.crop is None:
        raise ExplainError("this explanation has no image to draw on")
    if target_index is not None and not 0 <= target_index < len(expl.targets):
        raise ExplainError(f"target index {target_index} is out of range: the explanation has "
                           f"{len(expl.targets)} targets")
    crop = cv2.cvtColor(np.ascontiguousarray(expl.crop), cv2.COLOR_RGB2BGR)
    hw = display_size(crop.shape[:2])
    grey = cv2.cvtColor(cv2.cvtColor(resize_image(crop, hw), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    grey = cv2.addWeighted(grey, 1 - GREY_LIGHTEN, np.full_like(grey, 255), GREY_LIGHTEN, 0)
    index = resize_nearest(concept_map(expl.masks), hw) if expl.num_concepts else np.full(hw, UNCOVERED)
    edges = np.zeros(hw, dtype=bool)
    edges[:, 1:] |= index[:, 1:] != index[:, :-1]
    edges[1:, :] |= index[1:, :] != index[:-1, :]
    uncovered = index == UNCOVERED
    targets = range(len(expl.targets)) if target_index is None else [target_index]
    panels = []
    for t in targets:
        values = expl.values_2d[t] if expl.num_concepts else np.zeros(0)
        scale = colour_scale(values)
        # One colour per concept, looked up per pixel (the last row is for uncovered pixels, then put back).
        table = np.concatenate([value_colours(values, scale), np.zeros((1, 3), np.uint8)])
        picture = cv2.addWeighted(grey, 1 - HEAT_ALPHA, table[index], HEAT_ALPHA, 0)
        picture[uncovered] = grey[uncovered]
        picture[edges] = OUTLINE_COLOUR
        panels.append(side_by_side(picture, _legend(expl, t, scale, not uncovered.any())))
    return compose(panels)


def _legend(expl: Explanation, t: int, scale: float, all_covered: bool) -> np.ndarray:
    width = LEGEND_WIDTH
    text_w = width - 2 * LEGEND_PAD
    lines = [(f"every concept's value ({expl.num_concepts})", MUTED_COLOUR),
             (f"{expl.method}: {expl.value_type} values", MUTED_COLOUR)]
    if not all_covered:
        lines.append(("grey: no concept there", MUTED_COLOUR))
    lines.append(("overlaps: the smaller concept shows", MUTED_COLOUR))
    height = LEGEND_PAD + LINE_HEIGHT * (1 + len(lines)) + 3 * LINE_HEIGHT + LEGEND_PAD
    legend = blank(height, width)
    y = LEGEND_PAD + LINE_HEIGHT
    title = target_title(expl.labels, expl.targets, expl.probabilities, t, text_w, TITLE_SCALE, TITLE_THICKNESS)
    put_text(legend, title, (LEGEND_PAD, y - 6), TEXT_COLOUR, TITLE_SCALE, TITLE_THICKNESS)
    for text, colour in lines:
        y += LINE_HEIGHT
        put_text(legend, fit_text(text, text_w), (LEGEND_PAD, y - 6), colour)
    draw_colour_bar(legend, LEGEND_PAD, y + LINE_HEIGHT // 2, text_w, scale)
    return legend
