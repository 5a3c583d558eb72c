"""The values figure (``values.png``): each concept's value with its 95 % interval, as horizontal bars.

Bars in ranking order (the top k first, above a dashed line; those beyond
:data:`MAX_BARS` as one grey line from their lowest to their highest value),
coloured on the overlay's scale, error bars
value ± z·stderr (z from the method, 1.96 by default), brackets over tied
concepts, the efficiency line (Σ values, and for Shapley values what they must
sum to: f(all concepts) − f(no concept)), and the method and evaluations in the
title. One panel per target.

Drawn with matplotlib (the ``plot`` extra), imported only here and only when
called; :func:`plot_available` says whether it is installed and :data:`PLOT_HINT`
what it would add.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ..distribution import install_hint
from ..errors import ConfigError, ExplainError
from ..explanation import DEFAULT_TOP_K, Explanation
from .layout import MAX_ASPECT, bound
from .overlay import tie_runs
from .scale import colour_scale, value_colours
from .text import target_title

PLOT_HINT = f"values.png (each value with its 95 % interval) needs matplotlib: {install_hint('plot')}"
#: z of a 95 % normal interval, used when the method does not say which it used.
DEFAULT_Z = 1.96
#: Bars drawn per target at most; the remaining concepts are summed in one more bar.
MAX_BARS = 20
#: Figure geometry, in inches (at :data:`DPI`): width; height per bar; per panel's title, axis and notes.
WIDTH_IN = 9.0
BAR_IN = 0.3
PANEL_EXTRA_IN = 1.6
DPI = 110
#: Fewest bars per target when many targets share the figure's height.
MIN_BARS = 3
#: Where the tie brackets sit, in axes fractions right of the plot, and the figure's right margin for them.
BRACKET_AT = 1.015
BRACKET_TICK = 0.012
RIGHT_MARGIN = 0.86
LEFT_MARGIN = 0.2
#: Longest class name in a panel's title (longer ones are cut, ending with "...").
TITLE_LABEL_CHARS = 40
#: Colours (matplotlib RGB) of bar edges, and of the labels of bars beyond the top k.
EDGE = (0.25, 0.25, 0.25)
MUTED = (0.45, 0.45, 0.45)


def plot_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) can be imported."""
    try:
        import matplotlib.figure  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


def render_values_figure(expl: Explanation, top_k: int = DEFAULT_TOP_K,
                         target_index: int | None = None) -> np.ndarray:
    """BGR picture of the values with their intervals: one panel per target (or the one asked for).

    Parameters
    ----------
    expl : Explanation
    top_k : int
        Concepts drawn as the top (full colour, above a separator line).
    target_index : int or None
        Only this target; ``None``: every target.

    Returns
    -------
    ndarray of uint8, H×W×3
        Bounded like the overlay (:func:`eac.engine.render.layout.bound`).

    Raises
    ------
    ConfigError
        matplotlib is not installed (:data:`PLOT_HINT`).
    ExplainError
        A negative ``top_k`` or a target index out of range.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError(PLOT_HINT) from exc
    if top_k < 0:
        raise ExplainError(f"top_k must be 0 or more, got {top_k}")
    if target_index is not None and not 0 <= target_index < len(expl.targets):
        raise ExplainError(f"target index {target_index} is out of range: the explanation has "
                           f"{len(expl.targets)} targets")
    targets = list(range(len(expl.targets))) if target_index is None else [target_index]
    budget_in = MAX_ASPECT * WIDTH_IN / len(targets) - PANEL_EXTRA_IN  # figure no taller than MAX_ASPECT × wide
    bars = max(MIN_BARS, min(MAX_BARS, math.floor(budget_in / BAR_IN) - 1))
    shown = min(expl.num_concepts, bars)
    rest = 1 if expl.num_concepts > shown else 0
    panel_in = PANEL_EXTRA_IN + BAR_IN * max(1, shown + rest)
    height_in = min(MAX_ASPECT * WIDTH_IN, max(WIDTH_IN / MAX_ASPECT, panel_in * len(targets)))
    figure = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(targets), 1, squeeze=False)[:, 0]
    for ax, t in zip(axes, targets):
        _panel(ax, expl, t, top_k, shown)
    figure.subplots_adjust(left=LEFT_MARGIN, right=RIGHT_MARGIN, hspace=PANEL_EXTRA_IN / panel_in + 0.15,
                           top=1 - 0.55 / height_in, bottom=0.75 / height_in)
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    return bound(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR))


def _panel(ax: Any, expl: Explanation, t: int, top_k: int, shown: int) -> None:
    """One target's bars on ``ax``."""
    n = expl.num_concepts
    values = expl.values_2d[t] if n else np.zeros(0)
    stderr = None if expl.stderr_2d is None or not n else expl.stderr_2d[t]
    order = [int(i) for i in np.argsort(-values, kind="stable")][:shown]
    rest = [int(i) for i in np.argsort(-values, kind="stable")][shown:]
    z = float(expl.info.get("interval_z") or DEFAULT_Z)
    scale = colour_scale(values)
    colours = value_colours(values[order], scale)[:, ::-1] / 255.0  # BGR → matplotlib RGB
    y = np.arange(len(order))
    finite = np.isfinite(values[order])
    shown_values = np.where(finite, values[order], 0.0)  # a non-finite value gets no bar (and "n/a")
    errors = None
    if stderr is not None:
        errors = np.where(np.isfinite(stderr[order]) & finite, z * stderr[order], 0.0)
    ax.barh(y, shown_values, color=colours, edgecolor=EDGE, linewidth=0.8, xerr=errors,
            error_kw={"ecolor": "black", "capsize": 3, "lw": 1})
    labels = [f"#{rank + 1}  concept {i}" + ("" if finite[rank] else " (n/a)") for rank, i in enumerate(order)]
    rest_values = values[rest][np.isfinite(values[rest])]
    if rest_values.size:  # their range, on the same axis (a sum would squeeze every bar)
        lo, hi = float(rest_values.min()), float(rest_values.max())
        ax.plot([lo, hi], [len(order), len(order)], color=MUTED, linewidth=4, solid_capstyle="butt")
        ax.text(hi, len(order), f"  {lo:+.2g} to {hi:+.2g}", va="center", fontsize=8, color=MUTED)
        labels.append(f"other {len(rest)} (range)")
    ax.set_yticks(np.arange(len(labels)), labels)
    for k, tick in enumerate(ax.get_yticklabels()):
        tick.set_color("black" if k < min(top_k, len(order)) else MUTED)
    ax.invert_yaxis()
    ax.axvline(0.0, color=EDGE, linewidth=0.8)
    if 0 < top_k < len(labels):
        ax.axhline(top_k - 0.5, color=MUTED, linestyle="--", linewidth=0.8)
    ax.grid(axis="x", color=(0.9, 0.9, 0.9))
    ax.set_axisbelow(True)
    stop = expl.info.get("stop_reason")
    names = None if not expl.labels else [_cut(str(label or ""), TITLE_LABEL_CHARS) for label in expl.labels]
    ax.set_title(f"{target_title(names, expl.targets, expl.probabilities, t)}   |   {expl.method}: "
                 f"{expl.value_type} values, {expl.num_evaluations} evaluations"
                 + (f", stopped: {stop}" if stop else ""), fontsize=10, loc="left")
    interval = (f"bars: 95 % intervals, value ± {z:.3g}·stderr" if stderr is not None
                else "no intervals: the values were not sampled")
    ax.set_xlabel(f"value (change in the class probability);  {interval}\n{_efficiency_line(expl, t, values)}",
                  fontsize=9)
    if not n:
        ax.text(0.5, 0.5, "no concepts", transform=ax.transAxes, ha="center", va="center")
    for first, last, hidden in tie_runs(expl.ties if t == 0 else None, order):
        _bracket(ax, first, last, hidden)


def _cut(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 3] + "..."


def _efficiency_line(expl: Explanation, t: int, values: np.ndarray) -> str:
    """What the values add up to, and what Shapley values must add up to."""
    total = float(values[np.isfinite(values)].sum())
    text = f"Σ values = {total:+.4g}"
    if expl.value_type == "shapley":
        text += " = f(all concepts) − f(no concept)  (efficiency"
        gap = expl.info.get("efficiency_gap")
        gaps = gap if isinstance(gap, list) else [gap]
        if t < len(gaps) and gaps[t] is not None and math.isfinite(float(gaps[t])):
            text += f": measured gap {float(gaps[t]):.1g}"
        text += ")"
    else:
        text += f"  ({expl.value_type} values need not add up to f(all) − f(∅))"
    return text


def _bracket(ax: Any, first: int, last: int, hidden: int) -> None:
    """A bracket right of the plot over bars ``first``…``last``, labelled "tied" (and "+N more")."""
    transform = ax.get_yaxis_transform()  # x in axes fractions, y in data
    top, bottom = first - 0.35, last + 0.35
    xs = [BRACKET_AT, BRACKET_AT + BRACKET_TICK, BRACKET_AT + BRACKET_TICK, BRACKET_AT]
    ax.plot(xs, [top, top, bottom, bottom], color="black", linewidth=1.2, transform=transform, clip_on=False)
    label = "tied" + (f", +{hidden} more" if hidden else "")
    ax.text(BRACKET_AT + 2 * BRACKET_TICK, (first + last) / 2, label, transform=transform, va="center",
            fontsize=8.5, clip_on=False)
