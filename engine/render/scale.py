"""The diverging colour scale every picture shares: blue negative, white 0, red positive, symmetric.

One explanation target has one scale, ``±max |value|`` over all its concepts
(:func:`colour_scale`), so the overlay, the heat map and the values figure give a
concept the same colour.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .text import MUTED_COLOUR, VALUE_DIGITS, put_text, text_width

#: BGR colours of the diverging scale: −max, 0, +max; and of a non-finite value.
NEGATIVE_COLOUR = (255, 64, 0)
ZERO_COLOUR = (255, 255, 255)
POSITIVE_COLOUR = (0, 24, 230)
NAN_COLOUR = (150, 150, 150)
OUTLINE_COLOUR = (40, 40, 40)
#: Colour bar: height in pixels, and the gap between it and its tick labels.
BAR_HEIGHT = 16
TICK_GAP = 20


def colour_scale(values: np.ndarray) -> float:
    """The magnitude drawn at full strength: max |value| over the finite values (0 when none)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size else 0.0


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
    b, g, r = (int(c) for c in value_colours(np.array([value], dtype=np.float64), scale)[0])
    return b, g, r


def value_colours(values: np.ndarray, scale: float) -> np.ndarray:
    """:func:`value_colour` of many values at once.

    Parameters
    ----------
    values : ndarray of float, N
    scale : float

    Returns
    -------
    ndarray of uint8, N×3
        BGR colours.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(values)
    t = np.zeros_like(values)
    if math.isfinite(scale) and scale > 0:
        t[finite] = np.clip(values[finite] / scale, -1.0, 1.0)
    end = np.where((t >= 0)[:, None], np.array(POSITIVE_COLOUR, float), np.array(NEGATIVE_COLOUR, float))
    zero = np.array(ZERO_COLOUR, dtype=np.float64)
    colours = np.round(zero + np.abs(t)[:, None] * (end - zero))
    colours[~finite] = NAN_COLOUR
    return colours.astype(np.uint8)


def draw_colour_bar(canvas: np.ndarray, x: int, y: int, width: int, scale: float) -> int:
    """Draw a horizontal colour bar, −scale … 0 … +scale, with its tick labels below it.

    Parameters
    ----------
    canvas : ndarray of uint8, H×W×3 (BGR), drawn into
    x, y : int
        Top-left corner of the bar.
    width : int
    scale : float

    Returns
    -------
    int
        The y just below the tick labels.
    """
    ramp = value_colours(np.linspace(-1.0, 1.0, width), 1.0)
    canvas[y : y + BAR_HEIGHT, x : x + width] = ramp[None]
    cv2.rectangle(canvas, (x, y), (x + width - 1, y + BAR_HEIGHT - 1), OUTLINE_COLOUR, 1)
    cv2.line(canvas, (x + width // 2, y + BAR_HEIGHT), (x + width // 2, y + BAR_HEIGHT + 4), OUTLINE_COLOUR, 1)
    base = y + BAR_HEIGHT + TICK_GAP
    lo, hi = (f"{-scale:+.{VALUE_DIGITS}g}", f"{scale:+.{VALUE_DIGITS}g}") if scale > 0 else ("-", "+")
    put_text(canvas, lo, (x, base), MUTED_COLOUR)
    put_text(canvas, "0", (x + width // 2 - text_width("0") // 2, base), MUTED_COLOUR)
    put_text(canvas, hi, (x + width - text_width(hi), base), MUTED_COLOUR)
    return base + TICK_GAP // 2
