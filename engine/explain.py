"""Concept explanations: EAC (faithful and fast) and the baseline methods.

One call, captum-style::

    expl = explain(image, classifier, concepts, method="eac", target=None)

or an :class:`Explainer` holding the classifier and settings for many images.
Every method runs on the same :class:`~eac.engine.evaluator.MaskedEvaluator`
(same concepts, baseline and batching) and returns an
:class:`~eac.engine.explanation.Explanation` whose values are changes of the
explained class's probability.

Methods and what their values are
---------------------------------
``eac`` (default; Shapley, black-box)
    EAC made fast. Coalitions are drawn in rounds of antithetic pairs (b, 1−b)
    — sizes from the Shapley kernel when N ≤ 16, uniform Bernoulli(½) above
    (``sampler="auto"``, measured) — plus the empty and full coalitions, and a
    surrogate of the explained class's probability is fitted on the recorded
    outputs. The values are the Shapley values of the surrogate: exact
    over all 2^N coalitions when N ≤ ``exact_max_n`` (milliseconds), otherwise a
    permutation estimator with antithetic pairs and a standard error per concept
    (the surrogate's sampling error; the fit quality is ``info["surrogate_r2"]``).
    The surrogate is the PIE form collapsed to the explained class,
    σ(α·b + β), fitted by the reference's BCE loss (convex, Newton); least squares
    of all logits (``surrogate="linear-logits"``) was measured less faithful.
    Rounds stop once the ranking is stable (Spearman between consecutive rounds ≥
    ``stop_spearman``) after ``min_evaluations``, or at ``max_evaluations``. When
    2^N coalitions fit in ``max_evaluations`` the classifier is simply enumerated
    and the values are its exact Shapley values. Needs only logits.
``eac-faithful`` (Banzhaf, needs features and head)
    The reference: 2500 Bernoulli(½) coalitions, the PIE surrogate
    softmax(Fc·(W·b + c) + bias)[y] with the model's own head, fitted by SGD
    (lr 0.008, momentum 0.9, batch 100, BCE, 50 epochs), then 50 000 Monte-Carlo
    coalitions per concept (uniform coalitions: a Banzhaf estimate). Seeded. The
    SGD runs on the collapsed map A = Fc·W (same iterates, see
    :func:`eac.kernels.surrogate.fit_pie_sgd`); the Monte-Carlo samples are shared by
    all concepts (the reference draws fresh ones per concept: same estimator) and
    the flipped evaluations are factorised (:func:`eac.kernels.shapley.softmax_banzhaf_mc`).
``shapley-exact`` (Shapley)
    All 2^N coalitions through the classifier; refused above ``MAX_EXACT_N``.
``kernelshap`` (Shapley)
    Weighted linear regression with the Shapley kernel: coalitions sampled in
    proportion to the kernel (so equal regression weights), paired, with the empty
    and full coalitions as exact constraints (efficiency).
``lime`` (other)
    Ridge regression on Bernoulli(½) coalitions (first one all-on), weighted by
    the exponential kernel of the cosine distance to the all-on coalition
    (width 0.25), as LIME's image explainer does.
``loo`` (other)
    Leave one out (feature ablation): full-image probability minus the
    probability with one concept's pixels set to the baseline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..kernels.shapley import (
    MAX_ENUMERATION_N,
    all_coalitions,
    exact_shapley,
    kernel_coalitions,
    softmax_banzhaf_mc,
    softmax_permutation_shapley,
    softmax_value_fn,
    surrogate_exact_values,
    uniform_coalitions,
)
from ..kernels.surrogate import (
    PIE_BATCH,
    PIE_EPOCHS,
    PIE_LR,
    PIE_MOMENTUM,
    fit_linear_logits,
    fit_logistic,
    fit_pie_sgd,
    softmax,
)
from .concepts import Concepts, Frame
from .errors import ConceptError, ExplainError
from .evaluator import MaskedEvaluator
from .explanation import Explanation
from .images import load_image
from .metrics import spearman

METHODS = ("eac", "eac-faithful", "shapley-exact", "kernelshap", "lime", "loo")
VALUE_TYPE = {
    "eac": "shapley",
    "eac-faithful": "banzhaf",
    "shapley-exact": "shapley",
    "kernelshap": "shapley",
    "lime": "other",
    "loo": "other",
}
#: Surrogates of ``eac``: "logistic" = σ(α·b + β) of the explained class fitted by BCE (default,
#: measured best); "linear-logits" = softmax(A·b + c) with A, c least squares of all logits.
SURROGATES = ("logistic", "linear-logits")
#: ``shapley-exact`` refuses more concepts than this (2^14 = 16 384 classifier runs).
MAX_EXACT_N = 14

#: Defaults of each method's options (see the module docstring). The ``eac`` defaults
#: were chosen by measured fidelity: /tmp/eac_explainer_measurements.md.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "eac": {
        "min_evaluations": 128,
        "max_evaluations": 256,
        "round_size": 64,
        "stop_spearman": 0.98,
        "sampler": "auto",
        "exact_max_n": 16,
        "permutations": 2048,
        "surrogate": "logistic",
        "ridge": 1e-6,
        "enumerate_small": True,
    },
    "eac-faithful": {
        "num_coalitions": 2500,
        "epochs": PIE_EPOCHS,
        "lr": PIE_LR,
        "momentum": PIE_MOMENTUM,
        "sgd_batch": PIE_BATCH,
        "mc_samples": 50_000,
    },
    "shapley-exact": {"max_n": MAX_EXACT_N},
    "kernelshap": {"num_samples": 512},
    "lime": {"num_samples": 1000, "kernel_width": 0.25, "alpha": 1.0},
    "loo": {},
}

ConceptsLike = Concepts | np.ndarray | Callable[[np.ndarray, Frame], Concepts]
TargetLike = int | str | Sequence[int | str] | None


class Explainer:
    """Explain a classifier's predictions with concepts; reusable across images.

    Parameters
    ----------
    classifier : Classifier
        Runtime classifier (:class:`eac.engine.classifier.Classifier` or anything
        with the same API).
    method : str
        One of :data:`METHODS` (default ``"eac"``).
    baseline : {"black", "mean", "blur"}
        Replacement of pixels outside a coalition (reference: black).
    batch_size : int, optional
        Classifier batch size (default :data:`eac.engine.evaluator.DEFAULT_BATCH_SIZE`).
    seed : int
        Seed of every random choice (same seed, same result).
    progress : bool
        tqdm progress bars over evaluations.
    **options
        Method options; see :data:`DEFAULT_OPTIONS`. Unknown names raise
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
        **options: Any,
    ) -> None:
        if method not in METHODS:
            raise ExplainError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        unknown = set(options) - set(DEFAULT_OPTIONS[method])
        if unknown:
            raise ExplainError(f"method {method!r} has no option(s) {', '.join(sorted(unknown))}; "
                               f"it takes {', '.join(DEFAULT_OPTIONS[method]) or 'none'}")
        self.classifier = classifier
        self.method = method
        self.baseline = baseline
        self.batch_size = batch_size
        self.seed = int(seed)
        self.progress = progress
        self.options = {**DEFAULT_OPTIONS[method], **options}
        self._check_options()
        if method == "eac-faithful" and getattr(classifier, "head", None) is None:
            raise ExplainError(
                "eac-faithful needs the classifier's features and last layer (head.npz), but this model folder has "
                "none (an imported black-box ONNX?); use --method eac, or export the model with `eac export classifier`"
            )

    def _check_options(self) -> None:
        o = self.options
        positive = [k for k in ("min_evaluations", "max_evaluations", "round_size", "permutations", "num_coalitions",
                                "epochs", "sgd_batch", "mc_samples", "num_samples", "max_n")
                    if k in o and (not isinstance(o[k], (int, np.integer)) or o[k] < 1)]
        if positive:
            raise ExplainError(f"option(s) {', '.join(positive)} of {self.method!r} must be positive integers")
        if "exact_max_n" in o and not 0 <= o["exact_max_n"] <= MAX_ENUMERATION_N:
            raise ExplainError(f"exact_max_n must be between 0 and {MAX_ENUMERATION_N} (2^N surrogate evaluations)")
        if self.method == "eac" and o["min_evaluations"] > o["max_evaluations"]:
            raise ExplainError("eac: min_evaluations is larger than max_evaluations")

    # ------------------------------------------------------------------ inputs
    def _crop(self, image: Any, concepts: ConceptsLike) -> tuple[np.ndarray, Frame]:
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        image = load_image(np.asarray(image))
        hw = tuple(int(v) for v in self.classifier.input_hw)
        if image.shape[:2] == hw:
            frame = concepts.frame if isinstance(concepts, Concepts) and concepts.frame.hw == hw else Frame.identity(hw)
            return image, frame
        return self.classifier.crop(image)

    def _masks(self, concepts: ConceptsLike, crop: np.ndarray, frame: Frame) -> tuple[np.ndarray, float, str]:
        seconds = 0.0
        source = "masks"
        if callable(concepts) and not isinstance(concepts, (Concepts, np.ndarray)):
            start = time.perf_counter()
            concepts = concepts(crop, frame)
            seconds = time.perf_counter() - start
        if isinstance(concepts, Concepts):
            source = concepts.source
            seconds = seconds or float(sum(concepts.timings.values()))
            masks = concepts.masks
        else:
            masks = np.asarray(concepts)
        if masks.ndim == 2 and masks.size == 0:
            masks = masks.reshape(0, *crop.shape[:2])
        if masks.ndim != 3 or masks.shape[1:] != crop.shape[:2]:
            raise ConceptError(f"concept masks must be N×{crop.shape[0]}×{crop.shape[1]} (the classifier's crop), "
                               f"got {masks.shape}; make them in the crop frame (classifier.crop(image))")
        if masks.dtype != bool:
            if masks.size and not np.isin(np.unique(masks), (0, 1)).all():
                raise ConceptError("concept masks must be boolean (or 0/1)")
            masks = masks.astype(bool)
        return masks, seconds, source

    def _targets(self, target: TargetLike, full_logits: np.ndarray) -> tuple[list[int], bool]:
        k = int(self.classifier.num_classes)
        labels = getattr(self.classifier, "labels", None)
        if target is None:
            return [int(np.argmax(full_logits))], True
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
        crop, frame = self._crop(image, concepts)
        masks, concept_seconds, source = self._masks(concepts, crop, frame)
        evaluator = MaskedEvaluator(self.classifier, crop, masks, baseline=self.baseline,
                                    batch_size=self.batch_size, progress=self.progress)
        full_logits = evaluator.evaluate_full().logits[0]
        targets, single = self._targets(target, full_logits)
        full_probs = softmax(full_logits[None])[0]
        rng = np.random.default_rng(self.seed)
        timings = {"concepts": concept_seconds, "fit": 0.0, "values": 0.0}
        info: dict[str, Any] = {"concept_source": source}
        n = masks.shape[0]
        if n == 0:
            values, stderr = np.zeros((len(targets), 0)), None
        else:
            runner = getattr(self, "_run_" + self.method.replace("-", "_"))
            values, stderr = runner(evaluator, np.array(targets), full_probs, rng, timings, info)
        timings["evaluations"] = evaluator.seconds
        labels = getattr(self.classifier, "labels", None)
        settings = {"baseline": self.baseline, "batch_size": evaluator.batch_size, "seed": self.seed, **self.options}
        return Explanation(
            values=values[0] if single else values,
            stderr=None if stderr is None else (stderr[0] if single else stderr),
            masks=masks,
            targets=targets,
            probabilities=[float(full_probs[t]) for t in targets],
            method=self.method,
            value_type=VALUE_TYPE[self.method],
            settings=settings,
            num_evaluations=evaluator.num_evaluations,
            timings=timings,
            labels=[str(labels[t]) for t in targets] if labels else None,
            provider=getattr(self.classifier, "provider", None),
            crop=crop,
            frame=frame,
            info=info,
        )

    # ------------------------------------------------------------------ methods
    # Each returns (values T×N, stderr T×N or None) and fills timings["fit"/"values"] and info.

    def _run_eac(self, ev, targets, full_probs, rng, timings, info):
        o = self.options
        n = ev.num_concepts
        if o["enumerate_small"] and 2**n <= o["max_evaluations"]:
            info["enumerated"] = True
            return self._exact(ev, targets, timings), None
        kind = o["sampler"]
        if kind == "auto":  # measured: kernel sizes win at N ≤ 16, uniform pairs above
            kind = "kernel" if n <= o["exact_max_n"] else "uniform"
        sampler = {"kernel": kernel_coalitions, "uniform": uniform_coalitions}.get(kind)
        if sampler is None:
            raise ExplainError(f"eac sampler must be 'auto', 'kernel' or 'uniform', got {o['sampler']!r}")
        info["sampler"] = kind
        if o["surrogate"] not in SURROGATES:
            raise ExplainError(f"eac surrogate must be one of {', '.join(SURROGATES)}, got {o['surrogate']!r}")
        # One fixed stream for the value estimator (N > exact_max_n): the same permutations every
        # round, so round-to-round changes come from the fit, and sampling is independent of it.
        value_seed = int(rng.integers(2**63))
        anchors = np.array([np.zeros(n, bool), np.ones(n, bool)])
        coal_parts, logit_parts = [anchors], [ev.evaluate(anchors).logits]
        previous = None
        rounds = 0
        stable = False
        while True:
            budget = o["max_evaluations"] - ev.num_evaluations + 1  # the full-crop run is not a coalition
            size = min(o["round_size"], budget)
            if size <= 0:
                break
            coal = sampler(size, n, rng, paired=True)
            coal_parts.append(coal)
            logit_parts.append(ev.evaluate(coal, desc=f"eac round {rounds + 1}").logits)
            rounds += 1
            x, logits = np.concatenate(coal_parts), np.concatenate(logit_parts)
            start = time.perf_counter()
            surrogates = self._fit_surrogates(x, logits, targets)
            timings["fit"] += time.perf_counter() - start
            start = time.perf_counter()
            values, stderr = self._surrogate_values(surrogates, n, value_seed)
            timings["values"] += time.perf_counter() - start
            if previous is not None and ev.num_evaluations - 1 >= o["min_evaluations"]:
                agree = [_rank_agreement(p, v) for p, v in zip(previous, values)]
                if min(agree) >= o["stop_spearman"]:
                    stable = True
                    break
            previous = values
        probs = softmax(logits)[:, targets]
        fitted = np.stack([softmax_value_fn(a, c, t)(x)[:, 0] for a, c, t in surrogates], axis=1)
        info.update({"rounds": rounds, "stopped_stable": stable, "surrogate": o["surrogate"],
                     "surrogate_r2": _r2(probs, fitted), "values_exact_on_surrogate": n <= o["exact_max_n"]})
        return values, stderr

    def _fit_surrogates(self, x, logits, targets):
        """One surrogate per target as (A K'×N, const K', target index): v(b) = softmax(A·b + c)[t]."""
        if self.options["surrogate"] == "linear-logits":
            a, const = fit_linear_logits(x, logits, ridge=self.options["ridge"])
            return [(a, const, [int(y)]) for y in targets]
        probs = softmax(logits)
        out = []
        for y in targets:
            alpha, beta = fit_logistic(x, probs[:, y])
            # σ(α·b + β) as a two-class softmax, so one code path computes the values.
            out.append((np.stack([alpha, np.zeros_like(alpha)]), np.array([beta, 0.0]), [0]))
        return out

    def _surrogate_values(self, surrogates, n, value_seed):
        vals, errs = [], []
        for a, const, t in surrogates:
            if n <= self.options["exact_max_n"]:
                vals.append(surrogate_exact_values(a, const, t, kind="shapley")[:, 0])
            else:
                v, e = softmax_permutation_shapley(a, const, t, self.options["permutations"],
                                                   np.random.default_rng(value_seed))
                vals.append(v[:, 0])
                errs.append(e[:, 0])
        return np.array(vals), (np.array(errs) if errs else None)

    def _run_eac_faithful(self, ev, targets, full_probs, rng, timings, info):
        o = self.options
        n = ev.num_concepts
        weight, bias = self.classifier.head
        coal = rng.random((o["num_coalitions"], n)) < 0.5
        probs = softmax(ev.evaluate(coal, desc="eac-faithful").logits)
        values, stderr, losses = [], [], []
        for y in targets:
            start = time.perf_counter()
            a, const, loss = fit_pie_sgd(coal, probs[:, y], weight, bias, int(y), rng, epochs=o["epochs"],
                                         lr=o["lr"], momentum=o["momentum"], batch_size=o["sgd_batch"])
            timings["fit"] += time.perf_counter() - start
            start = time.perf_counter()
            v, e = softmax_banzhaf_mc(a, const, [y], o["mc_samples"], rng)
            timings["values"] += time.perf_counter() - start
            values.append(v[:, 0])
            stderr.append(e[:, 0])
            losses.append(loss[-1])
        info.update({"surrogate": "PIE, SGD on BCE", "final_bce": losses})
        return np.array(values), np.array(stderr)

    def _exact(self, ev, targets, timings):
        n = ev.num_concepts
        coal = all_coalitions(n)
        probs = softmax(ev.evaluate(coal, desc="all coalitions").logits)[:, targets]
        start = time.perf_counter()
        values = exact_shapley(probs, n).T
        timings["values"] += time.perf_counter() - start
        return values

    def _run_shapley_exact(self, ev, targets, full_probs, rng, timings, info):
        n = ev.num_concepts
        if n > self.options["max_n"]:
            raise ExplainError(f"shapley-exact needs 2^{n} classifier runs for {n} concepts; it is limited to "
                               f"N ≤ {self.options['max_n']}: use fewer concepts or --method eac")
        return self._exact(ev, targets, timings), None

    def _run_kernelshap(self, ev, targets, full_probs, rng, timings, info):
        n = ev.num_concepts
        ends = softmax(ev.evaluate(np.array([np.zeros(n, bool), np.ones(n, bool)])).logits)[:, targets]
        v0, v1 = ends[0], ends[1]
        if n == 1:
            return (v1 - v0)[:, None], None
        z = kernel_coalitions(self.options["num_samples"], n, rng, paired=True)
        y = softmax(ev.evaluate(z, desc="kernelshap").logits)[:, targets]  # M×T
        start = time.perf_counter()
        zf = z.astype(np.float64)
        # Efficiency constraint Σφ = v1 − v0 eliminates the last concept (as KernelSHAP does).
        rhs = y - v0 - zf[:, -1:] * (v1 - v0)
        design = zf[:, :-1] - zf[:, -1:]
        head, *_ = np.linalg.lstsq(design, rhs, rcond=None)  # (N−1)×T
        last = (v1 - v0) - head.sum(axis=0)
        timings["fit"] += time.perf_counter() - start
        return np.concatenate([head, last[None]], axis=0).T, None

    def _run_lime(self, ev, targets, full_probs, rng, timings, info):
        o = self.options
        n = ev.num_concepts
        z = rng.random((o["num_samples"], n)) < 0.5
        z[0] = True
        y = softmax(ev.evaluate(z, desc="lime").logits)[:, targets]
        start = time.perf_counter()
        zf = z.astype(np.float64)
        norms = np.sqrt(zf.sum(axis=1))
        cos = np.divide(zf.sum(axis=1), norms * np.sqrt(n), out=np.zeros(len(zf)), where=norms > 0)
        distance = 1.0 - cos
        weights = np.sqrt(np.exp(-(distance**2) / o["kernel_width"] ** 2))
        wsum = weights.sum()
        xm = weights @ zf / wsum
        ym = weights @ y / wsum
        xc, yc = zf - xm, y - ym
        lhs = (xc * weights[:, None]).T @ xc + o["alpha"] * np.eye(n)
        coef = np.linalg.solve(lhs, (xc * weights[:, None]).T @ yc)  # N×T
        timings["fit"] += time.perf_counter() - start
        info["lime_intercept"] = (ym - xm @ coef).tolist()
        return coef.T, None

    def _run_loo(self, ev, targets, full_probs, rng, timings, info):
        n = ev.num_concepts
        without = softmax(ev.evaluate(np.eye(n, dtype=bool), invert=True, desc="loo").logits)[:, targets]
        return (full_probs[targets][None, :] - without).T, None


def _rank_agreement(a: np.ndarray, b: np.ndarray) -> float:
    if np.array_equal(np.argsort(-a, kind="stable"), np.argsort(-b, kind="stable")):
        return 1.0
    rho = spearman(a, b)
    return -1.0 if np.isnan(rho) else rho


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss = ((y - y.mean(axis=0)) ** 2).sum()
    return float(1.0 - ((y - pred) ** 2).sum() / ss) if ss > 0 else 1.0


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
    """Explain one image; see :class:`Explainer` for the parameters and the module docstring for methods."""
    return Explainer(classifier, method=method, baseline=baseline, batch_size=batch_size, seed=seed,
                     progress=progress, **options).explain(image_or_crop, concepts, target)
