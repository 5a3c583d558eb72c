"""Sanity checks of explanation methods: does the explanation depend on the model?

Adebayo et al. (NeurIPS 2018, "Sanity Checks for Saliency Maps") showed that
some attribution methods give nearly the same picture when the network's
weights are destroyed: they describe the image (edges, areas), not the model.
This module explains one image with the same concepts and the same explained
class on the original classifier and on modified ones — weights re-initialised
by :mod:`eac.engine.randomise` (cascading from the head down, or one layer at a
time), or a model trained on permuted labels (the bench's data randomisation,
:mod:`eac.bench.sanity`) — and measures, per method and per step, how similar
each explanation stays to the original's:

* **similarity**: the Spearman rank correlation of the N concept values (signed)
  with the original's values;
* **top-k kept**: the share of the original's top-k concepts still in the top k.

Verdict
-------
A method **passes** when its explanation of the fully randomised model (the
last cascading step: every chosen layer re-initialised) is no more similar to
the original's than an unrelated ranking would be: similarity below
:func:`critical_similarity`, the one-sided :data:`SIGNIFICANCE` critical value of
Spearman's ρ between independent rankings of N concepts (ρ has mean 0 and
variance 1/(N − 1) under independence; normal approximation, so
z₀.₉₅/√(N − 1): 0.50 for 12 concepts, 0.32 for 28). A fixed threshold would
be too strict with many concepts and meaningless with few; this one says what
is being claimed: "we cannot tell this explanation apart from one of an
unrelated model". It **fails** above it. It is **inconclusive** when the method
does not even agree with itself: its re-run on the original model with another
seed (``rerun``, the first step) is below the same critical value, so its own
sampling noise would pass the check for it; or when the original explanation
is constant (no ranking to compare).

Randomised models and flat outputs
----------------------------------
A randomised network often gives nearly the same probability to every masked
image: the concepts no longer matter, the true Shapley values are all ≈ 0, and
any ranking of them is noise. That is the point of the check: a method
faithful to the model must then produce values near 0 in an order unrelated to
the original's, so a low similarity is the right outcome, while a method that
keeps the original's order is showing something that is not in the model. To
keep the comparison about the model and not about the estimator, every step
uses the same seed, the same concepts, the same explained class (the original
model's top-1, whatever the randomised model predicts) and the same budget
(:func:`fixed_budget_options` turns stopping rules off, so ``eac`` spends the
same number of evaluations on every model instead of stopping early on the
original and running to its cap on a flat one); the rerun step measures the
method's own noise on the unchanged model, and ``scale`` (the largest |value|)
shows the values shrinking as the model is destroyed. An explanation that
becomes constant (every value equal, e.g. a dead network's CAM) has no ranking
left: its similarity counts as 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from ..kernels.surrogate import softmax
from .errors import SanityError
from .metrics import spearman

#: One-sided significance level of the pass threshold (:func:`critical_similarity`).
SIGNIFICANCE = 0.05
#: The rerun step explains the original model again with the method's seed plus this.
RERUN_SEED_OFFSET = 1
#: Concepts in the top-k comparison.
DEFAULT_TOP_K = 3
#: Fewest concepts a rank correlation is computed over.
MIN_CONCEPTS = 3
#: Step kinds: the rerun on the original model, the two weight randomisations, a model trained on permuted labels.
KINDS = ("rerun", "cascading", "independent", "data")
VERDICTS = ("pass", "fail", "inconclusive")

#: A method as the sanity check runs it: (classifier, crop h×w×3 uint8, masks N×h×w bool, target, seed) → N values.
SanityMethod = Callable[[Any, np.ndarray, np.ndarray, int, int], np.ndarray]


def critical_similarity(concept_counts: Sequence[int]) -> float:
    """The largest similarity an unrelated explanation reaches with probability :data:`SIGNIFICANCE`.

    For one image of N concepts, Spearman's ρ between independent rankings has
    mean 0 and variance 1/(N − 1); for the mean over several images, the
    variance is Σ 1/(N_i − 1) / S². The threshold is z_{1−α} times its square root
    (normal approximation).

    Parameters
    ----------
    concept_counts : sequence of int
        N of each image compared (all ≥ :data:`MIN_CONCEPTS`).

    Returns
    -------
    float
    """
    counts = [int(n) for n in concept_counts]
    if not counts or min(counts) < MIN_CONCEPTS:
        raise SanityError(f"a rank correlation needs at least {MIN_CONCEPTS} concepts per image, got {counts}")
    z = NormalDist().inv_cdf(1.0 - SIGNIFICANCE)
    return float(z * math.sqrt(sum(1.0 / (n - 1) for n in counts)) / len(counts))


def fewest_testable_concepts() -> int:
    """The fewest concepts at which a verdict can be ``pass``: :func:`critical_similarity` below 1 (4 at 5 %).

    With fewer, no Spearman correlation is significant and every verdict is ``inconclusive``.
    """
    z = NormalDist().inv_cdf(1.0 - SIGNIFICANCE)
    return max(MIN_CONCEPTS, math.floor(1.0 + z * z) + 1)


def similarity(values: np.ndarray, reference: np.ndarray) -> float:
    """Spearman's ρ of two value vectors (N); 0 when ``values`` is constant, NaN when ``reference`` is."""
    values, reference = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    if np.ptp(reference) == 0 or not np.all(np.isfinite(reference)):
        return float("nan")
    if np.ptp(values) == 0 or not np.all(np.isfinite(values)):
        return 0.0
    return float(spearman(values, reference))


def top_k_kept(values: np.ndarray, reference: np.ndarray, k: int = DEFAULT_TOP_K) -> float:
    """Share of ``reference``'s top-k concepts (highest values) that are in ``values``'s top k."""
    k = min(int(k), len(reference))
    if k < 1:
        return float("nan")
    top_v = set(np.argsort(-np.asarray(values, np.float64), kind="stable")[:k].tolist())
    top_r = set(np.argsort(-np.asarray(reference, np.float64), kind="stable")[:k].tolist())
    return len(top_v & top_r) / k


def verdict(rerun: float, final: float, critical: float) -> str:
    """``pass``, ``fail`` or ``inconclusive`` (see the module docstring)."""
    if not math.isfinite(final) or not math.isfinite(rerun) or rerun <= critical:
        return "inconclusive"
    return "pass" if final < critical else "fail"


def fixed_budget_options(method: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``options`` for ``method`` with any stopping rule off: every model gets the same evaluations.

    A method with both ``min_evaluations`` and ``max_evaluations`` options
    (``eac``, ``eac-surrogate``) gets its minimum raised to its maximum.
    """
    from .methods import get_method

    cls = get_method(method)
    merged = {**cls.defaults, **(options or {})}
    out = dict(options or {})
    if "min_evaluations" in merged and "max_evaluations" in merged:
        out["min_evaluations"] = merged["max_evaluations"]
        out.setdefault("max_evaluations", merged["max_evaluations"])
    return out


def registered_method(name: str, options: dict[str, Any] | None = None, batch_size: int | None = None
                      ) -> SanityMethod:
    """A registered explanation method as a :data:`SanityMethod` (stopping rules off, :func:`fixed_budget_options`)."""
    from .explainer import Explainer

    opts = fixed_budget_options(name, options)

    def run(classifier: Any, crop: np.ndarray, masks: np.ndarray, target: int, seed: int) -> np.ndarray:
        explainer = Explainer(classifier, method=name, batch_size=batch_size, seed=seed, **opts)
        return np.asarray(explainer.explain(crop, masks, target).values, np.float64)

    return run


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SanityStep:
    """One model compared with the original.

    Attributes
    ----------
    kind : {"rerun", "cascading", "independent", "data"}
    label : str
        What was changed, in words.
    layers : tuple of str
        Randomised layers (head first), empty for ``rerun`` and ``data``.
    """

    kind: str
    label: str
    layers: tuple[str, ...] = ()

    @property
    def randomised(self) -> int:
        """Number of randomised layers."""
        return len(self.layers)


@dataclass
class StepResult:
    """One method on one step.

    Attributes
    ----------
    values : ndarray of float64, N
    similarity : float
        Spearman's ρ with the original values (:func:`similarity`).
    top_k_kept : float
    scale : float
        The largest |value|.
    abs_similarity : float
        Spearman's ρ of the |values| with the original's |values| (importance regardless of sign).
    """

    values: np.ndarray
    similarity: float
    top_k_kept: float
    scale: float
    abs_similarity: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"similarity": _num(self.similarity), "abs_similarity": _num(self.abs_similarity),
                "top_k_kept": _num(self.top_k_kept), "scale": _num(self.scale),
                "values": [_num(v) for v in self.values]}


@dataclass
class SanityReport:
    """The sanity check of several methods on one image.

    Attributes
    ----------
    methods : list of str
    target : int
        The explained class (the original model's top-1).
    target_label : str or None
    n_concepts : int
    top_k : int
    original : dict of str to ndarray
        Each method's values on the original model (N).
    steps : list of SanityStep
        ``rerun`` first, then the modified models in order.
    results : dict of (str, int) to StepResult
        (method, step index) → result.
    probabilities : list of float
        The explained class's probability on the whole crop, per step (rerun: the original's).
    top_classes : list of int
        Each step's model's top-1 class on the whole crop.
    settings : dict
        Seeds, budgets, randomisation settings (JSON-ready).
    """

    methods: list[str]
    target: int
    target_label: str | None
    n_concepts: int
    top_k: int
    original: dict[str, np.ndarray] = field(default_factory=dict)
    steps: list[SanityStep] = field(default_factory=list)
    results: dict[tuple[str, int], StepResult] = field(default_factory=dict)
    probabilities: list[float] = field(default_factory=list)
    top_classes: list[int] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def critical(self) -> float:
        """The pass threshold of this image (:func:`critical_similarity`)."""
        return critical_similarity([self.n_concepts])

    @property
    def too_few_concepts(self) -> bool:
        """No correlation can be significant (the threshold is 1 or more): inconclusive whatever the values."""
        return self.critical >= 1.0

    def indices(self, kind: str) -> list[int]:
        """Step indices of one kind, in order."""
        return [i for i, s in enumerate(self.steps) if s.kind == kind]

    def curve(self, method: str, kind: str = "cascading") -> list[float]:
        """Similarities of ``method`` over the steps of ``kind``."""
        return [self.results[(method, i)].similarity for i in self.indices(kind)]

    def rerun_similarity(self, method: str) -> float:
        rerun = self.indices("rerun")
        return self.results[(method, rerun[0])].similarity if rerun else 1.0

    def final_similarity(self, method: str, kind: str = "cascading") -> float:
        """Similarity at the last step of ``kind`` (cascading: every chosen layer randomised); NaN if none."""
        steps = self.indices(kind)
        return self.results[(method, steps[-1])].similarity if steps else float("nan")

    def verdict(self, method: str, kind: str = "cascading") -> str:
        """``pass``/``fail``/``inconclusive`` on the last step of ``kind``; ``n/a`` when there is none."""
        if not self.indices(kind):
            return "n/a"
        return verdict(self.rerun_similarity(method), self.final_similarity(method, kind), self.critical)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, threshold, steps, per-method results and verdicts."""
        kinds = [k for k in ("cascading", "data") if self.indices(k)]
        return {
            "target": self.target, "target_label": self.target_label, "n_concepts": self.n_concepts,
            "top_k": self.top_k, "significance": SIGNIFICANCE, "critical_similarity": self.critical,
            "settings": self.settings,
            "steps": [{"kind": s.kind, "label": s.label, "layers": list(s.layers), "randomised": s.randomised,
                       "probability": _num(p), "top_class": c}
                      for s, p, c in zip(self.steps, self.probabilities, self.top_classes)],
            "methods": {m: {"original": [_num(v) for v in self.original[m]],
                            "steps": [self.results[(m, i)].to_dict() for i in range(len(self.steps))],
                            "verdicts": {k: self.verdict(m, k) for k in kinds}}
                        for m in self.methods},
        }

    def table_lines(self, method: str) -> list[str]:
        """The printed table of one method: a row per step, then the verdicts."""
        k = self.top_k
        lines = [f"  {'step':<12} {'layers':>6} {'Spearman':>9} {f'top-{k} kept':>11} {'p(class)':>9} "
                 f"{'max|value|':>11}  model"]
        for i, step in enumerate(self.steps):
            r = self.results[(method, i)]
            lines.append(f"  {step.kind:<12} {step.randomised:>6} {_fmt(r.similarity, 3):>9} "
                         f"{_fmt(r.top_k_kept, 2):>11} {_fmt(self.probabilities[i], 3):>9} {r.scale:>11.3g}  "
                         f"{step.label}")
        kinds = [kind for kind in ("cascading", "data") if self.indices(kind)]
        for kind in kinds:
            if self.too_few_concepts:
                lines.append(f"  {kind}: INCONCLUSIVE (too few concepts: {self.n_concepts}; the check needs at "
                             f"least {fewest_testable_concepts()})")
                continue
            lines.append(f"  {kind}: {self.verdict(method, kind).upper()} (final Spearman "
                         f"{_fmt(self.final_similarity(method, kind), 3)}, pass below {self.critical:.2f}; "
                         f"rerun {_fmt(self.rerun_similarity(method), 3)})")
        if not kinds:
            lines.append("  no verdict: it comes from the cascading randomisation (--mode cascading or both)")
        return lines


def _num(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


# --------------------------------------------------------------------------- running
def compare_models(
    original: Any,
    crop: np.ndarray,
    masks: np.ndarray,
    methods: dict[str, SanityMethod],
    models: Iterable[tuple[SanityStep, Any]],
    *,
    seed: int = 0,
    top_k: int = DEFAULT_TOP_K,
    progress: Callable[[str], None] | None = None,
) -> SanityReport:
    """Explain ``crop`` with every method on the original and on each model; compare.

    Parameters
    ----------
    original : Classifier
        The model the explanations are compared to.
    crop : ndarray of uint8, h×w×3
        The image in the classifier's input frame (``classifier.crop(image)[0]``).
    masks : ndarray of bool, N×h×w
        The concepts (the same on every model).
    methods : dict of str to SanityMethod
        Name → method (:func:`registered_method`, or any function of the same form).
    models : iterable of (SanityStep, Classifier)
        The modified models, in order; each is used before the next is asked for,
        so an iterator may hand out temporary copies.
    seed : int
        Seed of every explanation (the rerun uses ``seed + RERUN_SEED_OFFSET``).
    top_k : int
    progress : callable(str), optional
        Told what is being done.

    Returns
    -------
    SanityReport
    """
    masks = np.asarray(masks, bool)
    crop = np.asarray(crop)
    if masks.ndim != 3 or masks.shape[1:] != crop.shape[:2]:
        raise SanityError(f"concept masks must be N×{crop.shape[0]}×{crop.shape[1]} (the crop), got {masks.shape}")
    if len(masks) < MIN_CONCEPTS:
        raise SanityError(f"the sanity check compares rankings and needs at least {MIN_CONCEPTS} concepts, "
                          f"got {len(masks)}; use more concepts (--n-segments, another concept source)")
    if not methods:
        raise SanityError("no method to check")
    say = progress or (lambda text: None)
    full = _full_probabilities(original, crop)
    target = int(np.argmax(full))
    labels = getattr(original, "labels", None)
    report = SanityReport(list(methods), target, str(labels[target]) if labels else None, len(masks), top_k,
                          settings={"seed": seed, "rerun_seed": seed + RERUN_SEED_OFFSET})
    for name, method in methods.items():
        say(f"original model: {name}")
        report.original[name] = np.asarray(method(original, crop, masks, target, seed), np.float64)

    def record(step: SanityStep, classifier: Any, method_seed: int) -> None:
        index = len(report.steps)
        report.steps.append(step)
        probs = full if classifier is original else _full_probabilities(classifier, crop)
        report.probabilities.append(float(probs[target]))
        report.top_classes.append(int(np.argmax(probs)))
        for name, method in methods.items():
            say(f"{step.label}: {name}")
            values = np.asarray(method(classifier, crop, masks, target, method_seed), np.float64)
            reference = report.original[name]
            report.results[(name, index)] = StepResult(values, similarity(values, reference),
                                                       top_k_kept(values, reference, top_k),
                                                       float(np.max(np.abs(values))) if values.size else 0.0,
                                                       similarity(np.abs(values), np.abs(reference)))

    record(SanityStep("rerun", f"the original, seed {seed + RERUN_SEED_OFFSET}"), original,
           seed + RERUN_SEED_OFFSET)
    for step, classifier in models:
        if step.kind not in KINDS[1:]:
            raise SanityError(f"step kind must be one of {', '.join(KINDS[1:])}, got {step.kind!r}")
        record(step, classifier, seed)
    return report


def _full_probabilities(classifier: Any, crop: np.ndarray) -> np.ndarray:
    """The class distribution of ``classifier`` on the whole crop, K float64."""
    return softmax(classifier.run(classifier.normalize(crop[None]), features=False).logits)[0]


def randomised_models(randomiser: Any, modes: Sequence[str], *, layers: Sequence[str] | None = None,
                      max_steps: int | None = None, session_options: Any = None, batch_size: int | None = None,
                      root: Any = None) -> Iterable[tuple[SanityStep, Any]]:
    """The randomised classifiers of :class:`~eac.engine.randomise.ModelRandomiser` ``randomiser``, one at a time.

    Each copy's folder is removed once the next is asked for (and at the end).

    Parameters
    ----------
    randomiser : ModelRandomiser
    modes : sequence of {"cascading", "independent"}
    layers : sequence of str, optional
        Layers to randomise (default: all).
    max_steps : int, optional
        At most this many steps per mode.
    session_options, batch_size :
        For :meth:`RandomisedCopy.load`.
    root : path-like, optional
        Where the temporary copies are written.
    """
    steps = [s for mode in modes for s in randomiser.steps(mode, layers, max_steps)]
    for copy in randomiser.copies(steps, root=root):
        classifier = copy.load(session_options, batch_size)
        label = copy.step.label
        yield SanityStep(copy.step.mode, label, copy.step.layers), classifier


__all__ = [
    "KINDS",
    "SIGNIFICANCE",
    "SanityMethod",
    "SanityReport",
    "SanityStep",
    "StepResult",
    "compare_models",
    "critical_similarity",
    "fewest_testable_concepts",
    "fixed_budget_options",
    "randomised_models",
    "registered_method",
    "similarity",
    "top_k_kept",
    "verdict",
]
