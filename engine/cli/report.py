"""What the command line prints about an explanation (terminal text only)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import numpy as np

from ..explanation import Explanation

#: Concept values are printed with this many significant digits.
VALUE_DIGITS = 4
#: Stages printed on the time line, in order.
TIME_STAGES = ("concepts", "evaluations", "fit", "values")


def plural(n: object, noun: str) -> str:
    """A count and its noun: ``1 class``, ``3 classes``, ``2 images``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def summary_lines(explanation: Explanation, top_k: int = 5,
                  annotate: Callable[[int], str] | None = None) -> list[str]:
    """Human-readable ranking: one line per top concept, then timings and metrics.

    ``annotate(i)`` may add a note to concept i's line (the demo says how much of it
    lies on the known right answer).
    """
    name = explanation.labels[0] if explanation.labels else f"class {explanation.target}"
    lines = [
        f"explained {name} (p={explanation.probability:.3f}) with {explanation.method} "
        f"({explanation.value_type} values) over {plural(explanation.num_concepts, 'concept')}, "
        f"{plural(explanation.num_evaluations, 'classifier evaluation')} on {explanation.provider or '?'}"
    ]
    values = explanation.values_2d[0]
    stderr = None if explanation.stderr is None else np.atleast_2d(explanation.stderr)[0]
    area = explanation.masks.reshape(explanation.num_concepts, -1).mean(axis=1) if explanation.num_concepts else []
    tied = {i for group in (explanation.ties or []) for i in group}
    for rank, i in enumerate(explanation.top(top_k), start=1):
        err = f" ± {stderr[i]:.2g}" if stderr is not None and np.isfinite(stderr[i]) else ""
        err += " (tied)" if i in tied else ""
        extra = annotate(i) if annotate is not None else ""
        lines.append(f"  #{rank}: concept {i:3d}  value {values[i]:+.{VALUE_DIGITS}g}{err}  "
                     f"(area {100 * area[i]:.1f}%{extra})")
    if explanation.num_concepts == 0:
        lines.append("  no concepts: nothing to rank")
    stop = explanation.info.get("stop_reason")
    if stop:
        lines.append(f"  stopped: {stop}")
    t = explanation.timings
    lines.append("  time: " + ", ".join(f"{k} {t[k]:.3f}s" for k in TIME_STAGES if k in t))
    metrics = explanation.info.get("metrics")
    if metrics and metrics.get("insertion_auc") is not None:
        lines.append(f"  insertion AUC {metrics['insertion_auc']:.2f} (higher is better), "
                     f"deletion AUC {metrics['deletion_auc']:.2f} (lower is better)")
    targets = len(explanation.targets)
    if targets > 1:
        lines.append(f"  (the ranking, ties and metrics above are {name}'s, the first of {targets} targets; "
                     "explanation.json and overlay.png hold every target)")
    return lines


def plot_notice(stream: TextIO = sys.stderr) -> None:
    """One line saying what the ``plot`` extra would add, when matplotlib is missing."""
    from ..render.values import PLOT_HINT, plot_available

    if not plot_available():
        print(f"eac: note: {PLOT_HINT}", file=stream)
