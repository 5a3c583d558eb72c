"""Concept explanations: one call per image, any registered method.

captum-style::

    expl = explain(image, classifier, concepts, method="eac", target=None)

or an :class:`Explainer` holding the classifier, the method and its settings
for many images. Every method (:mod:`eac.engine.methods`, one module each)
runs on the same :class:`~eac.engine.evaluator.MaskedEvaluator` (same
concepts, baseline and batching) and its values are changes of the explained
class's probability; the :class:`~eac.engine.explanation.Explanation` says
which kind of value (Shapley, Banzhaf, other) it holds.

The path of one image: :func:`eac.engine.images.load_image` (files) →
:meth:`Classifier.crop <eac.engine.classifier.Classifier.crop>` (the one crop
rule) → the concept source on the crop (:class:`~eac.engine.concepts.Concepts`,
validated once) → :class:`MaskedEvaluator` (the full crop, then coalitions) →
the method's ``run`` → :class:`Explanation`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..kernels.surrogate import softmax
from .concepts import DEFAULT_MAX_CONCEPTS, Concepts, Frame
from .errors import ExplainError, TooManyConceptsError
from .evaluator import MaskedEvaluator
from .explanation import Explanation
from .images import load_image
from .methods import get_method, method_names
from .methods.base import MethodInput

ConceptsLike = Concepts | np.ndarray | Callable[[np.ndarray, Frame], Concepts]
TargetLike = int | str | Sequence[int | str] | None


def __getattr__(name: str) -> Any:
    # METHODS and VALUE_TYPE are views of the method registry.
    if name == "METHODS":
        return method_names()
    if name == "VALUE_TYPE":
        return {n: get_method(n).value_type for n in method_names()}
    raise AttributeError(name)


def resolve_targets(target: TargetLike, num_classes: int, labels: Sequence[str] | None) -> tuple[list[int], bool]:
    """Class indices of a target given as an index, a label (any case), a digit string, or several of them.

    Parameters
    ----------
    target : int, str or sequence of them
    num_classes : int
        K, the classifier's number of classes.
    labels : sequence of str, optional
        The classifier's class names (K), if it has them.

    Returns
    -------
    (list of int, bool)
        The indices, and whether one target was given (not a sequence).

    Raises
    ------
    ExplainError
        An empty sequence, an unknown name, a name without labels, or an index outside 0..K-1 (one line).
    """
    k = int(num_classes)
    single = isinstance(target, (int, np.integer, str))
    items = [target] if single else list(target)
    if not items:
        raise ExplainError("no target class given; name at least one or leave the target out for the top-1 class")
    out = []
    for t in items:
        if isinstance(t, str):
            if t.strip().lstrip("-").isdigit():
                t = int(t)
            elif labels:
                lowered = [str(lab).lower() for lab in labels]
                if t.lower() not in lowered:
                    raise ExplainError(f"class name {t!r} is not one of the classifier's labels "
                                       f"(e.g. {', '.join(map(str, labels[:5]))})")
                t = lowered.index(t.lower())
            else:
                raise ExplainError(f"class name {t!r} given but the classifier has no labels; give a class index")
        if not isinstance(t, (int, np.integer)) or not 0 <= int(t) < k:
            raise ExplainError(f"target class {t} is out of range: the classifier has {k} classes (0..{k - 1})")
        out.append(int(t))
    return out, single


class Explainer:
    """Explain a classifier's predictions with concepts; reusable across images and threads.

    Parameters
    ----------
    classifier : Classifier
        Runtime classifier (:class:`eac.engine.classifier.Classifier` or anything
        with the same API).
    method : str
        A registered method name (:func:`eac.engine.methods.method_names`; default ``"eac"``).
    baseline : {"black", "mean", "blur"}
        Replacement of pixels outside a coalition (reference: black).
    batch_size : int, optional
        Classifier batch size (default :data:`eac.engine.evaluator.DEFAULT_BATCH_SIZE`).
    seed : int
        Seed of every random choice (same seed, same result).
    progress : bool
        tqdm progress bars over evaluations.
    max_concepts : int
        Refuse images with more concepts (:data:`eac.engine.concepts.DEFAULT_MAX_CONCEPTS`):
        memory and the evaluations needed grow with N.
    **options
        Method options (the method class's ``defaults``); unknown names raise
        :class:`ExplainError`.
    """

    def __init__(
        self,
        classifier: Any,
        method: str = "eac",
        baseline: str = "black",
        batch_size: int | None = None,
        seed: int = 0,
        progress: bool = False,
        max_concepts: int = DEFAULT_MAX_CONCEPTS,
        **options: Any,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ExplainError(f"seed must be a non-negative integer, got {seed!r}")
        self.method = get_method(method)(**options)
        self.method.check_classifier(classifier)
        self.classifier = classifier
        self.baseline = baseline
        self.batch_size = batch_size
        self.seed = int(seed)
        self.progress = progress
        self.max_concepts = int(max_concepts)

    @property
    def options(self) -> dict[str, Any]:
        """The method's options (defaults filled in)."""
        return self.method.options

    # ------------------------------------------------------------------ inputs
    def _concepts(self, concepts: ConceptsLike, crop: np.ndarray, frame: Frame) -> Concepts:
        """The concepts of ``crop`` as a validated :class:`Concepts` (sources are run here, timed)."""
        if isinstance(concepts, Concepts):
            return concepts
        if callable(concepts) and not isinstance(concepts, np.ndarray):
            start = time.perf_counter()
            result = concepts(crop, frame)
            if not isinstance(result, Concepts):
                raise ExplainError(f"a concept source must return Concepts, got {type(result).__name__}")
            if not result.timings:
                result.timings["source"] = time.perf_counter() - start
            return result
        masks = np.asarray(concepts)
        if masks.ndim == 2 and masks.size == 0:
            masks = masks.reshape(0, *crop.shape[:2])
        return Concepts(masks, None, "masks", frame)

    def _targets(self, target: TargetLike, full_logits: np.ndarray) -> tuple[list[int], bool]:
        if target is None:
            return [int(np.argmax(full_logits))], True
        return resolve_targets(target, int(self.classifier.num_classes), getattr(self.classifier, "labels", None))

    # ------------------------------------------------------------------ main
    def explain(self, image: Any, concepts: ConceptsLike, target: TargetLike = None) -> Explanation:
        """Explain ``image`` (any size, or already the classifier's crop) with ``concepts``.

        Parameters
        ----------
        image : ndarray (H×W×3 uint8 RGB) or path
            The image; when it is not already the classifier's input size it is
            resized and centre-cropped as the classifier's preprocessing says.
        concepts : Concepts, ndarray of bool N×h×w, or callable(crop, frame) -> Concepts
            Concept masks in the crop frame, or a concept source run on the crop.
        target : int, str, list of int/str, or None
            Class(es) to explain, by index or label; None: the top-1 class on the
            whole crop. A single target gives N values, a list T×N.

        Returns
        -------
        Explanation
        """
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        crop, frame = self.classifier.crop(image)
        if isinstance(concepts, Concepts) and concepts.frame.hw == frame.hw:
            frame = concepts.frame  # masks made for this crop carry their own frame
        found = self._concepts(concepts, crop, frame)
        if found.hw != tuple(crop.shape[:2]):
            raise ExplainError(f"concept masks are {found.hw[0]}×{found.hw[1]} but the classifier's crop is "
                               f"{crop.shape[0]}×{crop.shape[1]}; make them in the crop frame "
                               "(classifier.crop(image))")
        if len(found) > self.max_concepts:
            raise TooManyConceptsError(f"{len(found)} concepts is more than the limit of {self.max_concepts} "
                                       "(memory and evaluations grow with it); raise max_concepts (--max-concepts) "
                                       "or ask the concept source for fewer", len(found), self.max_concepts)
        masks = found.masks
        evaluator = MaskedEvaluator(self.classifier, crop, masks, baseline=self.baseline,
                                    batch_size=self.batch_size, progress=self.progress,
                                    record_features=self.method.needs_features)
        full_logits = evaluator.evaluate_full().logits[0]
        targets, single = self._targets(target, full_logits)
        full_probs = softmax(full_logits[None])[0]
        inp = MethodInput(evaluator, self.classifier, np.array(targets), full_logits,
                          np.random.default_rng(self.seed))
        info: dict[str, Any] = {"concept_source": found.source}
        if "settings" in found.info:  # e.g. the SAM generator's grid, filters and prompt schedule
            info["concept_settings"] = found.info["settings"]
        stderr = ties = heatmaps = None
        if len(found) == 0:
            values = np.zeros((len(targets), 0))
        else:
            result = self.method.run(inp)
            values, stderr, ties, heatmaps = result.values, result.stderr, result.ties, result.heatmaps
            info.update(result.info)
        if heatmaps is not None:
            info["heatmaps"] = heatmaps
        timings = {"concepts": float(sum(found.timings.values())), **inp.timings,
                   "evaluations": evaluator.seconds}
        labels = getattr(self.classifier, "labels", None)
        settings = {"baseline": self.baseline, "batch_size": evaluator.batch_size, "seed": self.seed,
                    **self.method.options}
        extra = {} if ties is None else {"ties": ties}
        return Explanation(
            values=values[0] if single else values,
            stderr=None if stderr is None else (stderr[0] if single else stderr),
            masks=masks,
            targets=targets,
            probabilities=[float(full_probs[t]) for t in targets],
            method=self.method.name,
            value_type=self.method.value_type,
            settings=settings,
            num_evaluations=evaluator.num_evaluations,
            timings=timings,
            labels=[str(labels[t]) for t in targets] if labels else None,
            provider=getattr(self.classifier, "provider", None),
            crop=crop,
            frame=frame,
            info=info,
            **extra,
        )


def explain(
    image_or_crop: Any,
    classifier: Any,
    concepts: ConceptsLike,
    method: str = "eac",
    target: TargetLike = None,
    *,
    baseline: str = "black",
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    **options: Any,
) -> Explanation:
    """Explain one image; see :class:`Explainer` for the parameters and :mod:`eac.engine.methods`."""
    return Explainer(classifier, method=method, baseline=baseline, batch_size=batch_size, seed=seed,
                     progress=progress, **options).explain(image_or_crop, concepts, target)
