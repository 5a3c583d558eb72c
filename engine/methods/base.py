"""The shared base of explanation methods: what a method gets, what it returns.

A method is a small class registered by name (see :mod:`eac.engine.methods`).
The :class:`~eac.engine.explainer.Explainer` prepares one :class:`MethodInput`
per image — the masked evaluator over the image's concepts, the explained
classes, the classifier's output on the whole crop and a seeded random
generator — and calls :meth:`Method.run`, which returns a :class:`MethodResult`.
Methods never print, never touch files and keep no per-image state, so one
method object serves many images and threads.

Adding a method means adding one module to this package with one subclass of
:class:`Method` that sets ``name``; the registry, the ``eac explain --method``
choices and help, and the README's method table are built from these classes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...kernels.surrogate import softmax
from ..errors import ExplainError

VALUE_TYPES = ("shapley", "banzhaf", "other")


@dataclass
class MethodInput:
    """Everything a method needs for one image.

    Attributes
    ----------
    evaluator : MaskedEvaluator
        Runs the classifier on coalitions of the image's N concepts.
    classifier : Classifier
        The runtime classifier (``head``, ``num_classes``, ``run``...).
    targets : ndarray of int, T
        Explained classes.
    full_logits : ndarray of float32, K
        The classifier's logits (or log-probabilities) on the whole crop.
    rng : numpy.random.Generator
        The method's only source of randomness (seeded by the Explainer).
    """

    evaluator: Any
    classifier: Any
    targets: np.ndarray
    full_logits: np.ndarray
    rng: np.random.Generator
    timings: dict[str, float] = field(default_factory=lambda: {"fit": 0.0, "values": 0.0})

    @property
    def num_concepts(self) -> int:
        return int(self.evaluator.num_concepts)

    @property
    def full_probs(self) -> np.ndarray:
        """Class distribution on the whole crop, K float64."""
        return softmax(self.full_logits[None])[0]

    def probabilities(self, coalitions: np.ndarray, invert: bool = False, desc: str | None = None) -> np.ndarray:
        """Probabilities of the explained classes on the masked images of M coalitions, M×T float64."""
        logits = self.evaluator.evaluate(coalitions, invert=invert, desc=desc).logits
        return softmax(logits)[:, self.targets]

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``timings[stage]`` (``"fit"`` or ``"values"``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class MethodResult:
    """What a method returns for one image.

    Attributes
    ----------
    values : ndarray of float64, T×N
        One value per explained class and concept.
    stderr : ndarray of float64, T×N, or None
        Standard errors of sampled values (None: exact or not a sampled quantity).
    ties : list of list of int, or None
        For the first target: groups of concepts whose values the method cannot
        tell apart (overlapping intervals).
    info : dict
        Method-specific results (fit quality, stopping reason...), JSON-ready.
    heatmaps : ndarray of float32, T×h×w, or None
        Pixel maps in the crop frame, for methods that have one (CAM).
    """

    values: np.ndarray
    stderr: np.ndarray | None = None
    ties: list[list[int]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    heatmaps: np.ndarray | None = None


class Method:
    """Base class of explanation methods.

    Subclasses set the class attributes and implement :meth:`run`; options are
    keyword arguments checked against ``defaults`` (unknown names raise
    :class:`ExplainError`) and by :meth:`check`.
    """

    #: Registry key and ``--method`` value.
    name: ClassVar[str] = ""
    #: What the values estimate: ``"shapley"``, ``"banzhaf"`` or ``"other"``.
    value_type: ClassVar[str] = "other"
    #: One line for ``--help`` and the README's method table.
    summary: ClassVar[str] = ""
    #: Classifier evaluations it costs, in words (README table).
    cost: ClassVar[str] = ""
    #: Option defaults; the options a user may set.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Option that ``--evaluations`` sets (None: the count is fixed by N).
    budget_option: ClassVar[str | None] = None
    #: Smallest budget the method can work with.
    min_budget: ClassVar[int] = 1
    #: Needs the classifier's features output recorded on every evaluation.
    needs_features: ClassVar[bool] = False
    #: Needs the classifier's final linear layer (head.npz).
    needs_head: ClassVar[bool] = False
    #: Options that must be positive integers.
    positive_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise ExplainError(f"method {self.name!r} has no option(s) {', '.join(sorted(unknown))}; "
                               f"it takes {', '.join(self.defaults) or 'none'}")
        self.options = {**self.defaults, **options}
        bad = [k for k in self.positive_options
               if not isinstance(self.options[k], (int, np.integer)) or isinstance(self.options[k], bool)
               or self.options[k] < 1]
        if bad:
            raise ExplainError(f"option(s) {', '.join(bad)} of {self.name!r} must be positive integers")
        self.check()

    def check(self) -> None:
        """Validate ``self.options`` beyond positivity; raise ExplainError."""

    @classmethod
    def budget(cls, evaluations: int) -> dict[str, Any]:
        """Options for a classifier-evaluation budget (``--evaluations``)."""
        if cls.budget_option is None:
            raise ExplainError(f"--evaluations does not apply to --method {cls.name} "
                               "(its evaluation count is fixed by the number of concepts)")
        if evaluations < cls.min_budget:
            raise ExplainError(f"--evaluations must be at least {cls.min_budget} for --method {cls.name}, "
                               f"got {evaluations}")
        return {cls.budget_option: int(evaluations)}

    def check_classifier(self, classifier: Any) -> None:
        """Refuse a classifier this method cannot explain (ExplainError)."""
        if self.needs_head and getattr(classifier, "head", None) is None:
            raise ExplainError(
                f"{self.name} needs the classifier's features and last layer (head.npz), but this model folder "
                "has none; use --method eac, or export the model with `eac export classifier` (or adopt it with "
                "`eac import-onnx`, which finds the final linear layer when it can)")

    def run(self, inp: MethodInput) -> MethodResult:
        """Compute the values for one image (N ≥ 1 concepts)."""
        raise NotImplementedError
