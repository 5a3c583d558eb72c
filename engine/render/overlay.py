"""The overlay: the image large, its top concepts filled and outlined by signed value, numbered, a legend.

One panel per explained class: the image (longer side :data:`~eac.engine.render.layout.IMAGE_SIDE`
pixels, whatever the input's size) beside a legend of constant width
(:data:`LEGEND_WIDTH`): the class and its probability, the method, the colour bar,
one row per top concept (swatch, rank, value ± standard error, concept index) and
brackets over tied concepts ("tied, +21 more" when the tie group reaches beyond
the rows shown). Nothing in the legend grows with the number of concepts or ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ExplainError
from ..explanation import DEFAULT_TOP_K, Explanation
from .layout import blank, compose, display_size, resize_image, resize_nearest, side_by_side
from .scale import OUTLINE_COLOUR, colour_scale, draw_colour_bar, value_colour
from .text import (
    FONT,
    LINE_HEIGHT,
    MUTED_COLOUR,
    TEXT_COLOUR,
    TITLE_SCALE,
    TITLE_THICKNESS,
    fit_text,
    format_value,
    put_text,
    target_title,
)

#: Opacity of a concept's fill over the image.
OVERLAY_ALPHA = 0.55
#: Concept outline: its colour's width, inside a dark halo this much wider (visible on any background).
OUTLINE_THICKNESS = 2
OUTLINE_HALO = 2
#: Rank numbers on the image: scale, stroke, and the dark outline's stroke.
RANK_FONT_SCALE = 0.8
RANK_THICKNESS = 2
RANK_OUTLINE = 5
#: The legend: fixed width, inner padding, row height, swatch side.
LEGEND_WIDTH = 520
LEGEND_PAD = 12
LEGEND_ROW = 30
SWATCH = 18
#: Legend columns, as x offsets from the legend's left edge: rank, value ± stderr, concept index,
#: tie bracket, tie label (each text is cut to its column).
RANK_X = LEGEND_PAD + SWATCH + 10
VALUE_X = RANK_X + 44
CONCEPT_X = VALUE_X + 170
BRACKET_X = CONCEPT_X + 110
TIE_LABEL_X = BRACKET_X + 14
#: Width of a bracket's tick marks, in pixels.
BRACKET_TICK = 6
#: Rows listed at most (more top concepts are drawn on the image and counted in one line), so a
#: panel's height stays near the image's.
MAX_LEGEND_ROWS = 15
TIE_NOTE = "bracket = tied: intervals overlap, order not established"


@dataclass(frozen=True)
class Row:
    """One legend row: rank (1-based), concept index, its colour (BGR)."""

    rank: int
    concept: int
    colour: tuple[int, int, int]


def render_overlay(expl: Explanation, top_k: int = DEFAULT_TOP_K, target_index: int | None = None) -> np.ndarray:
    """BGR overlay of an explanation: one panel per target (or the one asked for).

    Parameters
    ----------
    expl : Explanation
        Must have a crop.
    top_k : int
        Concepts drawn and listed (up to :data:`MAX_LEGEND_ROWS` listed).
    target_index : int or None
        Draw only this target (0-based); ``None``: every target, one panel each.

    Returns
    -------
    ndarray of uint8, H×W×3
        At most :data:`~eac.engine.render.layout.MAX_WIDTH` wide, aspect within
        :data:`~eac.engine.render.layout.MAX_ASPECT`.

    Raises
    ------
    ExplainError
        No crop, a negative ``top_k`` or a target index out of range.
    """
    if expl.crop is None:
        raise ExplainError("this explanation has no image to draw on")
    if top_k < 0:
        raise ExplainError(f"top_k must be 0 or more, got {top_k}")
    targets = range(len(expl.targets)) if target_index is None else [_check_target(expl, target_index)]
    return compose([overlay_panel(expl, top_k, t) for t in targets])


def _check_target(expl: Explanation, t: int) -> int:
    if not 0 <= t < len(expl.targets):
        raise ExplainError(f"target index {t} is out of range: the explanation has {len(expl.targets)} targets")
    return t


def overlay_panel(expl: Explanation, top_k: int, t: int) -> np.ndarray:
    """One target's panel: the drawn image beside its legend (BGR, not yet bounded)."""
    rows, scale = _rows(expl, top_k, t)
    return side_by_side(_draw_concepts(expl, rows), _legend(expl, t, rows, scale))


def render_overlay_image(expl: Explanation, top_k: int = DEFAULT_TOP_K, target_index: int = 0) -> np.ndarray:
    """The overlay's image alone (no legend): the crop at display size, top concepts drawn and numbered.

    Parameters
    ----------
    expl : Explanation
        Must have a crop.
    top_k : int
    target_index : int

    Returns
    -------
    ndarray of uint8, H×W×3 (BGR)
        Longer side :data:`~eac.engine.render.layout.IMAGE_SIDE` (for thumbnails).
    """
    if expl.crop is None:
        raise ExplainError("this explanation has no image to draw on")
    if top_k < 0:
        raise ExplainError(f"top_k must be 0 or more, got {top_k}")
    rows, _ = _rows(expl, top_k, _check_target(expl, target_index))
    return _draw_concepts(expl, rows)


def _rows(expl: Explanation, top_k: int, t: int) -> tuple[list[Row], float]:
    """The legend rows of target t (top k concepts with their colours) and the colour scale."""
    values = expl.values_2d[t] if expl.num_concepts else np.zeros(0)
    scale = colour_scale(values)
    top = expl.top(top_k, t) if expl.num_concepts else []
    return [Row(rank, i, value_colour(float(values[i]), scale)) for rank, i in enumerate(top, start=1)], scale


def _draw_concepts(expl: Explanation, rows: list[Row]) -> np.ndarray:
    """The crop at display size with the rows' concepts filled, outlined and numbered."""
    crop = cv2.cvtColor(np.ascontiguousarray(expl.crop), cv2.COLOR_RGB2BGR)
    hw = display_size(crop.shape[:2])
    picture = resize_image(crop, hw)
    masks = [resize_nearest(expl.masks[row.concept], hw) for row in rows]
    fill = np.zeros_like(picture)
    filled = np.zeros(hw, dtype=bool)
    for row, mask in zip(rows[::-1], masks[::-1]):  # the better concept on top where two overlap
        fill[mask] = row.colour
        filled |= mask
    out = picture.copy()
    out[filled] = cv2.addWeighted(picture, 1 - OVERLAY_ALPHA, fill, OVERLAY_ALPHA, 0)[filled]
    for row, mask in zip(rows, masks):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, OUTLINE_COLOUR, OUTLINE_THICKNESS + OUTLINE_HALO, cv2.LINE_AA)
        cv2.drawContours(out, contours, -1, row.colour, OUTLINE_THICKNESS, cv2.LINE_AA)
    for row, mask in zip(rows, masks):
        point = label_point(mask)
        if point is None:
            continue
        text = str(row.rank)
        (tw, th), _ = cv2.getTextSize(text, FONT, RANK_FONT_SCALE, RANK_THICKNESS)
        org = (point[0] - tw // 2, point[1] + th // 2)
        cv2.putText(out, text, org, FONT, RANK_FONT_SCALE, (0, 0, 0), RANK_OUTLINE, cv2.LINE_AA)
        cv2.putText(out, text, org, FONT, RANK_FONT_SCALE, (255, 255, 255), RANK_THICKNESS, cv2.LINE_AA)
    return out


def label_point(mask: np.ndarray) -> tuple[int, int] | None:
    """The (x, y) of ``mask`` farthest from its border (inside even for a ring-shaped concept), or None."""
    if not mask.any():
        return None
    padded = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def tie_runs(ties: list[list[int]] | None, shown: list[int]) -> list[tuple[int, int, int]]:
    """Brackets to draw: ``(first row, last row, members not shown)`` per run of consecutive tied rows.

    Parameters
    ----------
    ties : list of list of int, or None
        Groups of tied concept indices.
    shown : list of int
        The concepts of the legend's rows, in row order.

    Returns
    -------
    list of tuple of int
        Row positions (0-based, inclusive) and how many members of the group are
        not among the rows.
    """
    position = {i: r for r, i in enumerate(shown)}
    runs = []
    for group in ties or []:
        rows = sorted(position[i] for i in group if i in position)
        if not rows:
            continue
        hidden = len(group) - len(rows)
        start = previous = rows[0]
        for r in rows[1:]:
            if r != previous + 1:
                runs.append((start, previous, hidden))
                start = r
            previous = r
        runs.append((start, previous, hidden))
    return sorted(runs)


def _legend(expl: Explanation, t: int, rows: list[Row], scale: float) -> np.ndarray:
    """The legend of one target, :data:`LEGEND_WIDTH` wide."""
    width = LEGEND_WIDTH
    text_w = width - 2 * LEGEND_PAD
    listed = rows[:MAX_LEGEND_ROWS]
    runs = tie_runs(expl.ties if t == 0 else None, [r.concept for r in listed])
    tied = {i for group in (expl.ties or []) for i in group} if t == 0 else set()
    footer = []
    if len(rows) > len(listed):
        footer.append((f"#{len(listed) + 1}-#{len(rows)} drawn too; all values in explanation.json", MUTED_COLOUR))
    if runs:
        footer.append((TIE_NOTE, MUTED_COLOUR))
    if tied:
        footer.append((f"{len(tied)} of {expl.num_concepts} concepts are tied with another", MUTED_COLOUR))
    if not rows:
        footer.append(("no concepts" if expl.num_concepts == 0 else "no concepts shown", TEXT_COLOUR))
    bar_block = 2 * LINE_HEIGHT + 30 if rows else 0
    height = (LEGEND_PAD + 2 * LINE_HEIGHT + bar_block + LEGEND_ROW * len(listed) + LINE_HEIGHT * len(footer)
              + LEGEND_PAD)
    legend = blank(height, width)
    y = LEGEND_PAD + LINE_HEIGHT
    title = target_title(expl.labels, expl.targets, expl.probabilities, t, text_w, TITLE_SCALE, TITLE_THICKNESS)
    put_text(legend, title, (LEGEND_PAD, y - 6), TEXT_COLOUR, TITLE_SCALE, TITLE_THICKNESS)
    y += LINE_HEIGHT
    method = f"{expl.method}: {expl.value_type} values, {expl.num_evaluations} evaluations"
    put_text(legend, fit_text(method, text_w), (LEGEND_PAD, y - 6), MUTED_COLOUR)
    if rows:
        y += LINE_HEIGHT
        put_text(legend, "colour = signed value (change in p)", (LEGEND_PAD, y - 6), MUTED_COLOUR)
        y = draw_colour_bar(legend, LEGEND_PAD, y, text_w, scale)
    values = expl.values_2d[t]
    stderr = expl.stderr_2d
    top_y = y
    for row in listed:
        box = y + (LEGEND_ROW - SWATCH) // 2
        cv2.rectangle(legend, (LEGEND_PAD, box), (LEGEND_PAD + SWATCH, box + SWATCH), row.colour, -1)
        cv2.rectangle(legend, (LEGEND_PAD, box), (LEGEND_PAD + SWATCH, box + SWATCH), OUTLINE_COLOUR, 1)
        base = box + SWATCH - 3
        se = None if stderr is None else float(stderr[t][row.concept])
        cells = ((RANK_X, VALUE_X, f"#{row.rank}", TEXT_COLOUR),
                 (VALUE_X, CONCEPT_X, format_value(float(values[row.concept]), se), TEXT_COLOUR),
                 (CONCEPT_X, BRACKET_X, f"concept {row.concept}", MUTED_COLOUR))
        for x, end, text, colour in cells:
            put_text(legend, fit_text(text, end - x - 8), (x, base), colour)
        y += LEGEND_ROW
    for first, last, hidden in runs:
        _bracket(legend, top_y + first * LEGEND_ROW, top_y + (last + 1) * LEGEND_ROW, last > first, hidden)
    for text, colour in footer:
        y += LINE_HEIGHT
        put_text(legend, fit_text(text, text_w), (LEGEND_PAD, y - 6), colour)
    return legend


def _bracket(legend: np.ndarray, top: int, bottom: int, tall: bool, hidden: int) -> None:
    """A bracket over legend rows ``top``…``bottom`` (pixels) labelled "tied" (and "+N more")."""
    x = BRACKET_X
    inset = (LEGEND_ROW - SWATCH) // 2
    y0, y1 = top + inset, bottom - inset
    cv2.line(legend, (x, y0), (x, y1), TEXT_COLOUR, 2)
    cv2.line(legend, (x - BRACKET_TICK, y0), (x, y0), TEXT_COLOUR, 2)
    cv2.line(legend, (x - BRACKET_TICK, y1), (x, y1), TEXT_COLOUR, 2)
    more = f"+{hidden} more" if hidden else ""
    space = LEGEND_WIDTH - LEGEND_PAD - TIE_LABEL_X
    middle = (y0 + y1) // 2
    if tall and more:
        put_text(legend, "tied", (TIE_LABEL_X, middle - 3), TEXT_COLOUR)
        put_text(legend, fit_text(more, space), (TIE_LABEL_X, middle + LINE_HEIGHT - 9), MUTED_COLOUR)
    else:
        put_text(legend, fit_text("tied, " + more if more else "tied", space), (TIE_LABEL_X, middle + 6),
                 TEXT_COLOUR)
