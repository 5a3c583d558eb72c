"""``lime``: LIME's weighted ridge regression on concepts."""

from __future__ import annotations

import numpy as np

from .base import Method, MethodInput, MethodResult

#: LIME's image explainer: kernel width 0.25 on the cosine distance, ridge alpha 1.
LIME_KERNEL_WIDTH = 0.25
LIME_ALPHA = 1.0


class Lime(Method):
    """Ridge regression on Bernoulli(½) coalitions (the first one all-on), weighted by
    the exponential kernel of the cosine distance to the all-on coalition, as
    LIME's image explainer does."""

    name = "lime"
    value_type = "other"
    summary = "LIME's kernel-weighted ridge regression on Bernoulli(½) coalitions"
    cost = "1000 (--evaluations)"
    defaults = {"num_samples": 1000, "kernel_width": LIME_KERNEL_WIDTH, "alpha": LIME_ALPHA}
    budget_option = "num_samples"
    min_budget = 2
    positive_options = ("num_samples",)

    def run(self, inp: MethodInput) -> MethodResult:
        o = self.options
        n = inp.num_concepts
        z = inp.rng.random((o["num_samples"], n)) < 0.5
        z[0] = True
        y = inp.probabilities(z, desc="lime")
        with inp.timed("fit"):
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
        return MethodResult(coef.T, info={"lime_intercept": (ym - xm @ coef).tolist()})
