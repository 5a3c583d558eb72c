"""``kernelshap``: KernelSHAP on concepts, with efficiency as an exact constraint."""

from __future__ import annotations

import numpy as np

from ...kernels.shapley import kernel_coalitions
from ..errors import ExplainError
from .base import Method, MethodInput, MethodResult


class KernelShap(Method):
    """Weighted linear regression with the Shapley kernel.

    Coalitions are sampled in proportion to the kernel (so the regression
    weights are equal), in antithetic pairs, with the empty and full coalitions
    as exact constraints (efficiency).
    """

    name = "kernelshap"
    value_type = "shapley"
    summary = "KernelSHAP: Shapley-kernel regression on paired coalitions, efficiency enforced"
    cost = "512 (--evaluations)"
    defaults = {"num_samples": 512}
    budget_option = "num_samples"
    min_budget = 2
    positive_options = ("num_samples",)

    def run(self, inp: MethodInput) -> MethodResult:
        n = inp.num_concepts
        ends = inp.probabilities(np.array([np.zeros(n, bool), np.ones(n, bool)]))
        v0, v1 = ends[0], ends[1]
        if n == 1:
            return MethodResult((v1 - v0)[:, None])
        if self.options["num_samples"] < n - 1:  # fewer rows than unknowns: one of infinitely many solutions
            raise ExplainError(f"kernelshap needs at least {n - 1} sampled coalitions for {n} concepts (one per "
                               f"unknown of its regression); raise --evaluations to {n - 1}")
        z = kernel_coalitions(self.options["num_samples"], n, inp.rng, paired=True)
        y = inp.probabilities(z, desc="kernelshap")  # M×T
        with inp.timed("fit"):
            zf = z.astype(np.float64)
            # Efficiency constraint Σφ = v1 − v0 eliminates the last concept (as KernelSHAP does).
            rhs = y - v0 - zf[:, -1:] * (v1 - v0)
            design = zf[:, :-1] - zf[:, -1:]
            head, *_ = np.linalg.lstsq(design, rhs, rcond=None)  # (N−1)×T
            last = (v1 - v0) - head.sum(axis=0)
        return MethodResult(np.concatenate([head, last[None]], axis=0).T)
