"""``shapley-exact``: Shapley values of the classifier itself, by enumerating all 2^N coalitions."""

from __future__ import annotations

import numpy as np

from ...kernels.shapley import all_coalitions, exact_shapley
from ..errors import ExplainError
from .base import Method, MethodInput, MethodResult

#: ``shapley-exact`` refuses more concepts than this (2^14 = 16 384 classifier runs).
MAX_EXACT_N = 14


def enumerated_shapley(inp: MethodInput) -> np.ndarray:
    """Exact Shapley values of the explained classes' probabilities: all 2^N coalitions, T×N."""
    n = inp.num_concepts
    probs = inp.probabilities(all_coalitions(n), desc="all coalitions")
    with inp.timed("values"):
        return exact_shapley(probs, n).T


class ShapleyExact(Method):
    name = "shapley-exact"
    value_type = "shapley"
    summary = "Shapley values of the classifier itself by enumerating all 2^N coalitions"
    cost = f"2^N (refused above N = {MAX_EXACT_N})"
    defaults = {"max_n": MAX_EXACT_N}
    positive_options = ("max_n",)

    def run(self, inp: MethodInput) -> MethodResult:
        n = inp.num_concepts
        if n > self.options["max_n"]:
            raise ExplainError(f"shapley-exact needs 2^{n} classifier runs for {n} concepts; it is limited to "
                               f"N ≤ {self.options['max_n']}: use fewer concepts or --method eac")
        return MethodResult(enumerated_shapley(inp))
