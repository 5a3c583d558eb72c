"""``eac`` (default): EAC made fast. (Interim: the surrogate estimator; see eac_surrogate.)"""

from __future__ import annotations

from .eac_surrogate import EacSurrogate


class Eac(EacSurrogate):
    name = "eac"
    summary = ("the PIE surrogate collapsed to the explained class, σ(α·b + β), fitted on paired coalitions; "
               "Shapley values of the surrogate")
