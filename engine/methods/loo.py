"""``loo``: leave one concept out (feature ablation)."""

from __future__ import annotations

import numpy as np

from .base import Method, MethodInput, MethodResult


class LeaveOneOut(Method):
    name = "loo"
    value_type = "other"
    summary = "leave one concept out: full-image probability minus the probability without the concept"
    cost = "N + 1"

    def run(self, inp: MethodInput) -> MethodResult:
        n = inp.num_concepts
        without = inp.probabilities(np.eye(n, dtype=bool), invert=True, desc="loo")  # N×T
        return MethodResult((inp.full_probs[inp.targets][None, :] - without).T)
