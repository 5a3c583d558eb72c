"""Faithfulness metrics: insertion / deletion AUC as the EAC reference computes them.

For a ranking of N concepts the reference builds N images:

insertion
    step k keeps the union of the k best concepts on a black baseline
    (pixels outside every chosen mask are black), k = 1..N;
deletion
    step k removes the union of the k best concepts from the image (everything
    else, including pixels no concept covers, is kept), k = 1..N.

It runs the classifier, takes the probability of the explained class y, caps it
at the probability on the full image and divides by it, and integrates the curve
with the trapezoid rule over x = k/N·100, k = 1..N (so the first point is the top
concept alone, not the empty image). Result on a 0–100 scale: higher insertion and
lower deletion are better. With N = 1 the reference returns the single capped,
normalised value (on a 0–1 scale); here it is multiplied by 100 to keep one scale.

The images go through the same :class:`~eac.engine.evaluator.MaskedEvaluator`
as the explanation (same baseline, batching, evaluation count).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kernels.surrogate import softmax
from .errors import ExplainError

if TYPE_CHECKING:  # the evaluator needs ONNX Runtime; the rank statistics here do not
    from .evaluator import MaskedEvaluator

PERCENT = 100.0
#: Random rankings averaged by :func:`random_ranking_auc`.
DEFAULT_RANDOM_REPEATS = 8


def curve_auc(probs: np.ndarray, full_prob: float) -> float:
    """Reference AUC of one curve (probabilities at k = 1..N), 0–100 scale."""
    out = np.minimum(np.asarray(probs, dtype=np.float64), full_prob) / full_prob
    n = out.shape[0]
    if n == 0:
        return float("nan")
    if n == 1:
        return float(out[0] * PERCENT)
    x = np.arange(1, n + 1, dtype=np.float64) / n * PERCENT
    return float(np.sum((x[1:] - x[:-1]) * (out[1:] + out[:-1]) / 2.0))


def ranked_coalitions(ranking: np.ndarray, n: int) -> np.ndarray:
    """N×N bool: row k−1 holds the k best concepts of ``ranking``."""
    ranking = np.asarray(ranking, dtype=np.int64)
    if sorted(ranking.tolist()) != list(range(n)):
        raise ExplainError(f"a ranking must be a permutation of the {n} concept indices")
    position = np.empty(n, dtype=np.int64)
    position[ranking] = np.arange(n)
    return position[None, :] < np.arange(1, n + 1)[:, None]


def insertion_deletion(
    evaluator: MaskedEvaluator,
    ranking: np.ndarray,
    target: int,
    full_prob: float | None = None,
) -> dict:
    """Insertion and deletion AUC of one ranking for class ``target``.

    Parameters
    ----------
    evaluator : MaskedEvaluator
        Bound to the crop and concept masks (baseline "black" for the reference).
    ranking : ndarray of int, N
        Concept indices, best first (any ranking: a method's, random, ...).
    target : int
        Class whose probability is tracked.
    full_prob : float, optional
        The class probability on the full crop (computed when omitted).

    Returns
    -------
    dict
        ``insertion`` and ``deletion`` (0–100 floats; NaN when N = 0) and the
        raw ``insertion_curve`` / ``deletion_curve`` (N probabilities each).
    """
    n = evaluator.num_concepts
    if not 0 <= int(target) < evaluator.num_classes:
        raise ExplainError(f"target class {target} is out of range (the classifier has {evaluator.num_classes})")
    if full_prob is None:
        full_prob = float(softmax(evaluator.evaluate_full().logits)[0, target])
    if n == 0:
        return {"insertion": float("nan"), "deletion": float("nan"), "insertion_curve": [], "deletion_curve": [],
                "full_prob": full_prob}
    steps = ranked_coalitions(ranking, n)
    ins = softmax(evaluator.evaluate(steps, desc="insertion").logits)[:, target]
    dele = softmax(evaluator.evaluate(steps, invert=True, desc="deletion").logits)[:, target]
    return {
        "insertion": curve_auc(ins, full_prob),
        "deletion": curve_auc(dele, full_prob),
        "insertion_curve": ins.tolist(),
        "deletion_curve": dele.tolist(),
        "full_prob": full_prob,
    }


def random_ranking_auc(
    evaluator: MaskedEvaluator,
    target: int,
    rng: np.random.Generator,
    repeats: int = DEFAULT_RANDOM_REPEATS,
    full_prob: float | None = None,
) -> dict:
    """Mean insertion / deletion AUC of ``repeats`` uniformly random rankings (a baseline)."""
    n = evaluator.num_concepts
    if full_prob is None:
        full_prob = float(softmax(evaluator.evaluate_full().logits)[0, target])
    scores = [insertion_deletion(evaluator, rng.permutation(n), target, full_prob) for _ in range(repeats)]
    return {
        "insertion": float(np.mean([s["insertion"] for s in scores])) if n else float("nan"),
        "deletion": float(np.mean([s["deletion"] for s in scores])) if n else float("nan"),
        "repeats": repeats,
    }


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two value vectors (NaN when either is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def add_metrics(explanation: Any, classifier: Any, batch_size: int | None = None) -> dict:
    """Insertion/deletion AUC of an explanation's ranking (reference protocol), stored in ``info["metrics"]``.

    Uses the explanation's own crop and masks with a black baseline; for several
    targets, the first one's ranking.
    """
    from .evaluator import MaskedEvaluator

    start = time.perf_counter()
    evaluator = MaskedEvaluator(classifier, explanation.crop, explanation.masks, baseline="black",
                                batch_size=batch_size, record_features=False)
    ranking = explanation.ranking if explanation.values.ndim == 1 else explanation.ranking[0]
    result = insertion_deletion(evaluator, ranking, explanation.target, full_prob=explanation.probability)
    metrics = {"insertion_auc": result["insertion"], "deletion_auc": result["deletion"],
               "evaluations": evaluator.num_evaluations, "seconds": time.perf_counter() - start}
    explanation.info["metrics"] = metrics
    return metrics
