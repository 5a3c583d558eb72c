"""How well a set of concepts matches a generated scene's known objects.

Used by the trained SAM's tests, the prompt-schedule study and the training
record. A scene's objects are its visible object masks; the background (pixels of
no object) is not an object. For a concept set (N×H×W bool masks) this module
computes:

* **recall**: an object is recovered when some concept has IoU ≥ ``RECALL_IOU``
  with it;
* **near-duplicates**: concepts with IoU ≥ ``DUPLICATE_IOU`` with another concept
  (they split an object's credit between them);
* **leftovers**: what each concept that recovers no object is
  (:data:`LEFTOVER_KINDS`);
* **intervals** of recall and the near-duplicate fraction, resampling scenes
  (:func:`ratio_interval`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

#: An object counts as recovered by a concept of at least this IoU (the issue's target).
RECALL_IOU = 0.85
#: Two concepts of at least this IoU are near-duplicates.
DUPLICATE_IOU = 0.9
#: Leftover classification: a concept is "on" a region when this fraction of its pixels lie in it ...
ON_REGION_FRACTION = 0.9
#: ... an "imprecise object" when its best IoU with an object is at least this (but below RECALL_IOU) ...
IMPRECISE_IOU = 0.5
#: ... and it "merges" objects when it holds this fraction of each of two or more objects.
MERGE_FRACTION = 0.5
#: Intervals of the summaries (:func:`ratio_interval`): level, bootstrap resamples and the resampling's seed
#: (fixed: a record's interval is reproducible from its scenes).
INTERVAL_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0
#: Bisection steps of the exact binomial bounds (2⁻⁴⁰: far below the printed precision).
BISECTION_STEPS = 40
#: What a concept that recovers no object can be, in the order they are tested.
LEFTOVER_KINDS = ("imprecise object", "background", "background piece", "object part", "merged objects", "mixed")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every mask of ``a`` (N×H×W) with every mask of ``b`` (M×H×W) → N×M (empty pairs: 0)."""
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)


def leftover_kind(concept: np.ndarray, objects: np.ndarray, best_object_iou: float) -> str:
    """Classify a concept (H×W bool) that recovers no object; see :data:`LEFTOVER_KINDS`."""
    area = max(int(concept.sum()), 1)
    background = ~objects.any(axis=0)
    if best_object_iou >= IMPRECISE_IOU:
        return "imprecise object"
    if iou_matrix(concept[None], background[None])[0, 0] >= RECALL_IOU:
        return "background"
    if (concept & background).sum() >= ON_REGION_FRACTION * area:
        return "background piece"
    inside = (objects & concept[None]).reshape(len(objects), -1).sum(1)
    if inside.max(initial=0) >= ON_REGION_FRACTION * area:
        return "object part"
    held = inside / np.maximum(objects.reshape(len(objects), -1).sum(1), 1)
    if (held >= MERGE_FRACTION).sum() >= 2:
        return "merged objects"
    return "mixed"


@dataclass
class SceneScore:
    """Concepts against one scene's objects."""

    objects: int
    recovered: int
    concepts: int
    duplicates: int
    leftovers: Counter = field(default_factory=Counter)
    best_iou: np.ndarray = field(default_factory=lambda: np.zeros(0))


def score_scene(concepts: np.ndarray, objects: np.ndarray) -> SceneScore:
    """Score one scene.

    Parameters
    ----------
    concepts : ndarray of bool, N×H×W
    objects : ndarray of bool, M×H×W

    Returns
    -------
    SceneScore
        ``best_iou`` holds each object's best IoU with a concept (M).
    """
    n = len(concepts)
    if n == 0:
        return SceneScore(len(objects), 0, 0, 0, Counter(), np.zeros(len(objects)))
    to_objects = iou_matrix(concepts, objects)
    best = to_objects.max(axis=0)
    pairwise = iou_matrix(concepts, concepts)
    np.fill_diagonal(pairwise, 0.0)
    duplicates = int((pairwise.max(axis=1) >= DUPLICATE_IOU).sum()) if n > 1 else 0
    leftovers: Counter = Counter()
    for i in np.flatnonzero(to_objects.max(axis=1) < RECALL_IOU):
        leftovers[leftover_kind(concepts[i], objects, float(to_objects[i].max()))] += 1
    return SceneScore(len(objects), int((best >= RECALL_IOU).sum()), n, duplicates, leftovers, best)


def _binomial_at_most(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def exact_binomial_interval(k: int, n: int, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """Clopper–Pearson interval of a proportion from ``k`` successes in ``n`` independent trials.

    The upper bound solves P(X ≤ k | p) = (1 − level)/2, the lower P(X ≥ k | p) = (1 − level)/2
    (bisection); 0 when k = 0, 1 when k = n. ``(nan, nan)`` for n = 0.
    """
    k, n = int(k), int(n)
    if n <= 0 or not 0 <= k <= n:
        return float("nan"), float("nan")
    tail = (1 - level) / 2

    def bisect(too_small) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if too_small(mid) else (lo, mid)
        return 0.5 * (lo + hi)

    upper = 1.0 if k == n else bisect(lambda p: _binomial_at_most(k, n, p) > tail)
    lower = 0.0 if k == 0 else bisect(lambda p: 1.0 - _binomial_at_most(k - 1, n, p) < tail)
    return lower, upper


def ratio_interval(numerators: np.ndarray, denominators: np.ndarray, level: float = INTERVAL_LEVEL,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Interval of ``sum(numerators) / sum(denominators)``: a scene bootstrap joined with Clopper–Pearson.

    Objects and concepts of one scene are not independent (one hard scene holds several misses or a
    duplicate pair), so the scene is the unit that is resampled (percentile bootstrap). At the ends
    (no miss, no duplicate) a bootstrap has nothing to resample and would print a zero-width interval;
    the exact binomial interval of the totals (:func:`exact_binomial_interval`) covers that case. The
    interval returned spans both.

    Parameters
    ----------
    numerators, denominators : ndarray, S
        Per-scene counts (e.g. recovered objects and objects).
    level : float
        Coverage of the interval.

    Returns
    -------
    (float, float)
        Lower and upper bound; ``(nan, nan)`` with no scene or nothing counted.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.size == 0 or den.sum() <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num.size, size=(resamples, num.size))
    totals = den[picks].sum(axis=1)
    ratios = num[picks].sum(axis=1) / np.where(totals > 0, totals, np.nan)
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(ratios, [tail, 100 - tail])
    exact_low, exact_high = exact_binomial_interval(round(num.sum()), round(den.sum()), level)
    return float(min(low, exact_low)), float(max(high, exact_high))


def summarise(scores: list[SceneScore]) -> dict[str, object]:
    """Totals over scenes: recall, concepts per scene, near-duplicate fraction, leftover kinds per scene.

    ``recall_interval`` and ``duplicate_interval`` are :func:`ratio_interval`'s intervals (a scene bootstrap
    joined with the exact binomial interval of the totals).
    """
    objects = sum(s.objects for s in scores)
    concepts = sum(s.concepts for s in scores)
    leftovers: Counter = Counter()
    for s in scores:
        leftovers.update(s.leftovers)
    n = max(len(scores), 1)
    return {
        "scenes": len(scores),
        "objects": objects,
        "recall": sum(s.recovered for s in scores) / max(objects, 1),
        "recall_interval": ratio_interval([s.recovered for s in scores], [s.objects for s in scores]),
        "concepts_per_scene": concepts / n,
        "objects_per_scene": objects / n,
        "duplicate_fraction": sum(s.duplicates for s in scores) / max(concepts, 1),
        "duplicate_interval": ratio_interval([s.duplicates for s in scores], [s.concepts for s in scores]),
        "leftovers_per_scene": {k: leftovers[k] / n for k in LEFTOVER_KINDS},
        "mean_best_iou": float(np.mean(np.concatenate([s.best_iou for s in scores]))) if objects else float("nan"),
    }


__all__ = ["DUPLICATE_IOU", "LEFTOVER_KINDS", "RECALL_IOU", "SceneScore", "iou_matrix", "leftover_kind",
           "score_scene", "summarise"]
