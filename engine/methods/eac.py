"""``eac`` (default): EAC made fast and faithful — the classifier's Shapley values, with the
fitted surrogate used only as a control variate.

The values estimate the Shapley values of the classifier's probability of the
explained class over the concepts (not those of a surrogate):

    φ̂ = φ(g) + (unbiased estimate of φ(f − g) from paired coalitions)

Coalitions come in pairs (S, S̄) stratified by size; small strata are evaluated
completely; a surrogate g (default: logistic with the pairwise terms that best
explain the additive fit's residuals; also the PIE form through the classifier's
own head) is cross-fitted so it never corrects the coalitions it was fitted on.
Every draw satisfies efficiency exactly (Σφ̂ = f(all) − f(none)); standard errors
cover the whole estimator (the pair is the sampling unit). Rounds stop once the
top-k ranking is resolved by the intervals, or every interval is narrow, or at
the budget; the Explanation says which (``info["stop_reason"]``). When 2^N
coalitions fit in the budget the classifier is enumerated and the values are
exact. See :func:`eac.kernels.estimators.residual_shapley` and the measurements
behind the defaults in ``bench/results/estimators.md``.
"""

from __future__ import annotations

import numpy as np

from ...kernels.estimators import (
    DEFAULT_FOLDS,
    DEFAULT_REFIT,
    DEFAULT_REL_TOL,
    DEFAULT_SURROGATE,
    DEFAULT_SURROGATE_MC,
    DEFAULT_TOP_K,
    DEFAULT_Z,
    MIN_STRATUM_DRAWS,
    REFITS,
    SURROGATE_MC,
    SURROGATES,
    default_options,
    minimum_evaluations,
    residual_shapley,
    schedule_minimum,
    schedule_summary,
)
from ...kernels.surrogate import softmax
from ..errors import ExplainError
from .base import Method, MethodInput, MethodResult

#: The classifier's full-crop run is counted by the evaluator but is not one of the estimator's coalitions.
FULL_CROP_RUNS = 1
#: Options of the schedule: None takes the default for the image's number of concepts (kernels.estimators).
SCHEDULE_OPTIONS = ("min_evaluations", "max_evaluations", "round_size")


#: Concept counts of the README's schedule table.
SCHEDULE_TABLE_SIZES = (8, 10, 12, 16, 24, 32, 48, 64)


def schedule_table(sizes: tuple[int, ...] = SCHEDULE_TABLE_SIZES) -> str:
    """The default schedule per number of concepts, as the README shows it (markdown)."""
    rows = ["| concepts N | coalitions at most | stopping rule consulted from | round size | classifier runs reported "
            "at most |", "| --- | --- | --- | --- | --- |"]
    for n in sizes:
        o = default_options(n)
        if 2**n <= o["max_evaluations"]:
            rows.append(f"| {n} | 2^{n} = {2**n}, all (exact values) | – | – | {2**n + FULL_CROP_RUNS} |")
        else:
            rows.append(f"| {n} | {o['max_evaluations']} | {o['min_evaluations']} | {o['round_size']} | "
                        f"{o['max_evaluations'] + FULL_CROP_RUNS} |")
    return "\n".join(rows)


class Eac(Method):
    name = "eac"
    value_type = "shapley"
    summary = ("Shapley values of the classifier, estimated from paired coalitions with a cross-fitted surrogate "
               "as control variate: exact efficiency, standard errors that cover the whole estimate, stops when "
               "the top concepts are resolved")
    cost = (f"{schedule_summary()} (--evaluations sets the cap), plus {FULL_CROP_RUNS} run on the full crop; "
            "2^N when that fits (exact)")
    defaults = {
        "min_evaluations": None,
        "max_evaluations": None,
        "round_size": None,
        "surrogate": DEFAULT_SURROGATE,
        "top_k": DEFAULT_TOP_K,
        "rel_tol": DEFAULT_REL_TOL,
        "z": DEFAULT_Z,
        "folds": DEFAULT_FOLDS,
        "surrogate_mc": DEFAULT_SURROGATE_MC,
        "refit": DEFAULT_REFIT,
    }
    budget_option = "max_evaluations"
    min_budget = 4
    positive_options = ("top_k", "folds")

    @property
    def needs_features(self) -> bool:  # type: ignore[override]
        return self.options["surrogate"] == "pie"

    @property
    def needs_head(self) -> bool:  # type: ignore[override]
        return self.options["surrogate"] == "pie"

    def check(self) -> None:
        o = self.options
        if o["surrogate"] not in SURROGATES:
            raise ExplainError(f"eac surrogate must be one of {', '.join(SURROGATES)}, got {o['surrogate']!r}")
        if o["surrogate_mc"] not in SURROGATE_MC:
            raise ExplainError(f"eac surrogate_mc must be one of {', '.join(SURROGATE_MC)}, got {o['surrogate_mc']!r}")
        if o["refit"] not in REFITS:
            raise ExplainError(f"eac refit must be one of {', '.join(REFITS)}, got {o['refit']!r}")
        bad = [k for k in SCHEDULE_OPTIONS if o[k] is not None
               and (not isinstance(o[k], (int, np.integer)) or isinstance(o[k], bool) or o[k] < 1)]
        if bad:
            raise ExplainError(f"option(s) {', '.join(bad)} of 'eac' must be positive integers")
        if o["min_evaluations"] is not None and o["max_evaluations"] is not None \
                and o["min_evaluations"] > o["max_evaluations"]:
            raise ExplainError("eac: min_evaluations is larger than max_evaluations")
        if (o["round_size"] is not None and o["round_size"] < 2) or o["folds"] < 2:
            raise ExplainError("eac: round_size and folds must be at least 2")
        if not (o["z"] > 0 and o["rel_tol"] >= 0):
            raise ExplainError("eac: z must be positive and rel_tol non-negative")

    def run(self, inp: MethodInput) -> MethodResult:
        o = self.options
        n = inp.num_concepts
        targets = inp.targets
        pie = o["surrogate"] == "pie"

        def value_fn(coalitions: np.ndarray):
            out = inp.evaluator.evaluate(coalitions, desc="eac")
            values = softmax(out.logits)[:, targets]
            return (values, out.features) if pie else values

        schedule = default_options(n)
        cap = schedule["max_evaluations"] if o["max_evaluations"] is None else int(o["max_evaluations"])
        info: dict = {}
        least = minimum_evaluations(n)
        if cap < least and 2**n > cap:
            if o["max_evaluations"] is not None:
                if 2**n < least:  # every coalition is fewer: enumerated, the values are exact
                    raise ExplainError(f"eac needs at least {2**n} evaluations for {n} concepts (every coalition, "
                                       f"2^{n}: exact values); raise --evaluations to {2**n}")
                raise ExplainError(f"eac needs at least {least} evaluations for {n} concepts "
                                   f"({MIN_STRATUM_DRAWS} coalition pairs per size); raise --evaluations to {least}")
            info["budget_raised_to"] = least  # the default budget, too small for this many concepts
            cap = least
        if o["min_evaluations"] is not None:
            minimum = int(o["min_evaluations"])
        elif o["max_evaluations"] is not None:  # --evaluations: the schedule's minimum for that cap
            minimum = schedule_minimum(cap)
        else:
            minimum = schedule["min_evaluations"]
        rounds = schedule["round_size"] if o["round_size"] is None else int(o["round_size"])
        minimum = min(minimum, cap)
        head = None
        if pie:
            weight, bias = inp.classifier.head
            head = (weight, bias, targets)
        fit_start = inp.evaluator.seconds
        with inp.timed("values"):
            est = residual_shapley(value_fn, n, inp.rng, surrogate=o["surrogate"], head=head,
                                   min_evaluations=minimum, max_evaluations=cap, round_size=rounds,
                                   top_k=int(o["top_k"]), rel_tol=float(o["rel_tol"]), z=float(o["z"]),
                                   folds=int(o["folds"]), surrogate_mc=o["surrogate_mc"], refit=o["refit"])
        # The estimator's wall time includes the classifier runs it asked for (the evaluations stage) and the
        # surrogate fits (the fit stage); the rest is the values stage.
        fit_seconds = float(est.info.get("fit_seconds", 0.0))
        inp.timings["values"] -= (inp.evaluator.seconds - fit_start) + fit_seconds
        inp.timings["fit"] = inp.timings.get("fit", 0.0) + fit_seconds
        info.update({
            "stop_reason": est.stop_reason,
            "surrogate": est.info.get("surrogate"),
            "surrogate_r2_heldout": est.info.get("r2_heldout"),
            "rounds": est.info.get("rounds"),
            "efficiency_gap": est.info.get("efficiency_gap"),
            "coalitions": est.evaluations,
            "schedule": {"min_evaluations": minimum, "max_evaluations": cap, "round_size": rounds},
            "interval_z": float(o["z"]),
        })
        if est.stop_reason == "enumerated":
            info["enumerated"] = True
        stderr = None if est.stop_reason == "enumerated" else est.stderr.T
        return MethodResult(est.values.T, stderr, ties=est.ties[0] if est.ties else None, info=info)
