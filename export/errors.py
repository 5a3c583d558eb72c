"""Typed errors of the exporters (all are :class:`eac.engine.errors.EacError`)."""

from __future__ import annotations

from ..engine.errors import EacError


class ExportError(EacError):
    """An export cannot be done as asked (bad checkpoint, unwritable folder...)."""


class CheckpointError(ExportError):
    """A checkpoint is missing, truncated, or of another model type."""


class ValidationError(ExportError):
    """The exported graph disagrees with PyTorch.

    Attributes
    ----------
    output : str
        Name of the offending output.
    kind : {"names", "shape", "values"}
        What disagreed.
    max_abs_diff : float
        Largest absolute difference (``nan`` for name/shape mismatches).
    index : tuple of int
        Where the largest difference is.
    tolerance : float
        The tolerance it exceeded.
    """

    def __init__(self, message: str, output: str = "", kind: str = "values", max_abs_diff: float = float("nan"),
                 index: tuple = (), tolerance: float = float("nan")):
        super().__init__(message)
        self.output = output
        self.kind = kind
        self.max_abs_diff = max_abs_diff
        self.index = index
        self.tolerance = tolerance
