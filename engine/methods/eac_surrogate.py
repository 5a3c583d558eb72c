"""The first version's fast estimator: Shapley values of a fitted surrogate (biased).

Coalitions are drawn in rounds of antithetic pairs (b, 1−b) — sizes from the
Shapley kernel when N ≤ 16, uniform Bernoulli(½) above (``sampler="auto"``) —
plus the empty and full coalitions, and a surrogate of the explained class's
probability is fitted on the recorded outputs. The values are the Shapley values
of the surrogate: exact over all 2^N coalitions when N ≤ ``exact_max_n``,
otherwise a permutation estimator whose standard error covers only that
sampling, not the surrogate's fit. The surrogate is the PIE form collapsed to
the explained class, σ(α·b + β), fitted by the reference's BCE loss (Newton);
``surrogate="linear-logits"`` fits all logits by least squares. Rounds stop
once the ranking is stable (Spearman between consecutive rounds ≥
``stop_spearman``) after ``min_evaluations``, or at ``max_evaluations``. When
2^N coalitions fit in ``max_evaluations`` the classifier is enumerated instead.

Its values converge to the surrogate's, not to the classifier's: kept as an
explicit option for comparison, never the default.
"""

from __future__ import annotations

import numpy as np

from ...kernels.shapley import (
    MAX_ENUMERATION_N,
    kernel_coalitions,
    softmax_permutation_shapley,
    softmax_value_fn,
    surrogate_exact_values,
    uniform_coalitions,
)
from ...kernels.surrogate import fit_linear_logits, fit_logistic, softmax
from ..errors import ExplainError
from ..metrics import spearman
from .base import Method, MethodInput, MethodResult
from .shapley_exact import enumerated_shapley

#: Surrogates: "logistic" = σ(α·b + β) of the explained class fitted by BCE (measured best);
#: "linear-logits" = softmax(A·b + c) with A, c least squares of all logits.
SURROGATES = ("logistic", "linear-logits")
SAMPLERS = {"kernel": kernel_coalitions, "uniform": uniform_coalitions}


class EacSurrogate(Method):
    name = "eac-surrogate"
    value_type = "shapley"
    summary = ("the first version's estimator: Shapley values of a logistic surrogate fitted on paired "
               "coalitions (biased: converges to the surrogate, not the classifier; for comparison)")
    cost = "128–256 (--evaluations raises the cap)"
    defaults = {
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
    }
    budget_option = "max_evaluations"
    min_budget = 4
    positive_options = ("min_evaluations", "max_evaluations", "round_size", "permutations")

    def check(self) -> None:
        o = self.options
        if not 0 <= o["exact_max_n"] <= MAX_ENUMERATION_N:
            raise ExplainError(f"exact_max_n must be between 0 and {MAX_ENUMERATION_N} (2^N surrogate evaluations)")
        if o["min_evaluations"] > o["max_evaluations"]:
            raise ExplainError(f"{self.name}: min_evaluations is larger than max_evaluations")
        if o["sampler"] not in ("auto", *SAMPLERS):
            raise ExplainError(f"{self.name} sampler must be 'auto', 'kernel' or 'uniform', got {o['sampler']!r}")
        if o["surrogate"] not in SURROGATES:
            raise ExplainError(f"{self.name} surrogate must be one of {', '.join(SURROGATES)}, "
                               f"got {o['surrogate']!r}")

    @classmethod
    def budget(cls, evaluations: int) -> dict:
        options = super().budget(evaluations)
        options["min_evaluations"] = min(evaluations, cls.defaults["min_evaluations"])
        return options

    def run(self, inp: MethodInput) -> MethodResult:
        o = self.options
        ev = inp.evaluator
        n = inp.num_concepts
        if o["enumerate_small"] and 2**n <= o["max_evaluations"]:
            return MethodResult(enumerated_shapley(inp), info={"enumerated": True})
        kind = o["sampler"]
        if kind == "auto":  # measured: kernel sizes win at N ≤ 16, uniform pairs above
            kind = "kernel" if n <= o["exact_max_n"] else "uniform"
        sampler = SAMPLERS[kind]
        # One fixed stream for the value estimator (N > exact_max_n): the same permutations every
        # round, so round-to-round changes come from the fit, and sampling is independent of it.
        value_seed = int(inp.rng.integers(2**63))
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
            coal = sampler(size, n, inp.rng, paired=True)
            coal_parts.append(coal)
            logit_parts.append(ev.evaluate(coal, desc=f"{self.name} round {rounds + 1}").logits)
            rounds += 1
            x, logits = np.concatenate(coal_parts), np.concatenate(logit_parts)
            with inp.timed("fit"):
                surrogates = self._fit_surrogates(x, logits, inp.targets)
            with inp.timed("values"):
                values, stderr = self._surrogate_values(surrogates, n, value_seed)
            if previous is not None and ev.num_evaluations - 1 >= o["min_evaluations"]:
                agree = [_rank_agreement(p, v) for p, v in zip(previous, values)]
                if min(agree) >= o["stop_spearman"]:
                    stable = True
                    break
            previous = values
        probs = softmax(logits)[:, inp.targets]
        fitted = np.stack([softmax_value_fn(a, c, t)(x)[:, 0] for a, c, t in surrogates], axis=1)
        info = {"sampler": kind, "rounds": rounds, "stopped_stable": stable, "surrogate": o["surrogate"],
                "surrogate_r2": _r2(probs, fitted), "values_exact_on_surrogate": n <= o["exact_max_n"]}
        return MethodResult(values, stderr, info=info)

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


def _rank_agreement(a: np.ndarray, b: np.ndarray) -> float:
    if np.array_equal(np.argsort(-a, kind="stable"), np.argsort(-b, kind="stable")):
        return 1.0
    rho = spearman(a, b)
    return -1.0 if np.isnan(rho) else rho


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss = ((y - y.mean(axis=0)) ** 2).sum()
    return float(1.0 - ((y - pred) ** 2).sum() / ss) if ss > 0 else 1.0
