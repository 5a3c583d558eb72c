"""Text on pictures: the numbers' format and opencv's Hershey font, measured and fitted to a width.

Hershey fonts are ASCII only: "±" is drawn as "+" over a bar, "–" as "-".
"""

from __future__ import annotations

import math

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
#: Body text scale and its line height in pixels (about 12 px capitals: readable when a
#: README shows the picture at two thirds of its size).
FONT_SCALE = 0.55
LINE_HEIGHT = 24
#: Titles: a larger, bold line.
TITLE_SCALE = 0.7
TITLE_THICKNESS = 2
TEXT_COLOUR = (0, 0, 0)
MUTED_COLOUR = (90, 90, 90)
#: Significant digits of values and of their standard errors.
VALUE_DIGITS = 3
STDERR_DIGITS = 2
#: What a string that does not fit its width ends with.
ELLIPSIS = "..."
#: Characters Hershey fonts cannot draw, replaced by ASCII ones (± is drawn specially).
ASCII_FOR = {"–": "-", "—": "-", "−": "-", "…": "...", "∅": "{}", "·": "-"}


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


def _ascii(text: str) -> str:
    for char, ascii_text in ASCII_FOR.items():
        text = text.replace(char, ascii_text)
    return text


def text_width(text: str, scale: float = FONT_SCALE, thickness: int = 1) -> int:
    """Width in pixels of ``text`` as :func:`put_text` draws it."""
    width = 0
    for j, piece in enumerate(_ascii(text).split("±")):
        if j:
            width += cv2.getTextSize("+", FONT, scale, thickness)[0][0]
        if piece:
            width += cv2.getTextSize(piece, FONT, scale, thickness)[0][0]
    return width


def fit_text(text: str, width: int, scale: float = FONT_SCALE, thickness: int = 1) -> str:
    """``text``, cut and ended with "..." when it is wider than ``width`` pixels."""
    if text_width(text, scale, thickness) <= width:
        return text
    for end in range(len(text) - 1, 0, -1):
        cut = text[:end].rstrip() + ELLIPSIS
        if text_width(cut, scale, thickness) <= width:
            return cut
    return ""


def put_text(image: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int] = TEXT_COLOUR,
             scale: float = FONT_SCALE, thickness: int = 1) -> int:
    """Draw ``text`` with its baseline at ``org`` (x, y) and return its width in pixels."""
    x, y = org
    for j, piece in enumerate(_ascii(text).split("±")):
        if j:
            pw = cv2.getTextSize("+", FONT, scale, thickness)[0][0]
            cv2.putText(image, "+", (x, y - 2), FONT, scale, colour, thickness, cv2.LINE_AA)
            cv2.line(image, (x + 1, y + 1), (x + pw - 1, y + 1), colour, thickness, cv2.LINE_AA)
            x += pw
        if piece:
            cv2.putText(image, piece, (x, y), FONT, scale, colour, thickness, cv2.LINE_AA)
            x += cv2.getTextSize(piece, FONT, scale, thickness)[0][0]
    return x - org[0]


def target_title(labels: list[str] | None, targets: list[int], probabilities: list[float], t: int,
                 width: int | None = None, scale: float = FONT_SCALE, thickness: int = 1) -> str:
    """``"<class name>   p = 0.958"`` for the t-th target (``"class 3"`` without labels).

    With ``width`` (pixels), a long class name is cut so the probability always shows.
    """
    label = labels[t] if labels and t < len(labels) and labels[t] else f"class {targets[t]}"
    probability = float(probabilities[t])
    p_text = f"   p = {probability:.3g}" if math.isfinite(probability) else "   p = n/a"
    if width is not None:
        label = fit_text(label, width - text_width(p_text, scale, thickness), scale, thickness)
    return label + p_text
