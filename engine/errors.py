"""Typed errors raised by eac.

Every error a user can cause derives from :class:`EacError`; the ``eac`` command
prints its message on one line and exits non-zero instead of showing a traceback.
Messages say what is wrong *and* what to do about it.
"""

from __future__ import annotations


class EacError(Exception):
    """Base class of every error eac raises on purpose."""

    exit_code = 2


class ModelFolderError(EacError):
    """A model folder is missing, incomplete, or does not match its manifest."""


class ManifestVersionError(ModelFolderError):
    """A manifest was written by a newer eac than this one."""


class ImageError(EacError):
    """An image file is missing, corrupt, or of an unsupported kind."""


class InputShapeError(EacError):
    """An array given to eac has the wrong shape or dtype."""


class ConceptError(EacError):
    """Concept masks are malformed (wrong shape, wrong frame, unreadable file)."""


class TooManyConceptsError(ConceptError):
    """An image has more concepts than the explainer's ``max_concepts`` (``count`` > ``limit``)."""

    def __init__(self, message: str, count: int, limit: int):
        super().__init__(message)
        self.count, self.limit = count, limit


class ExplainError(EacError):
    """An explanation cannot be computed as asked (bad target, method limits)."""


class NonFiniteOutputError(EacError):
    """A model produced NaN or infinite values."""


class ConfigError(EacError):
    """A setting given on the command line or to the library is out of range."""


class ProviderError(EacError):
    """An ONNX Runtime execution provider was asked for but is not available."""


class SanityError(EacError):
    """A sanity check cannot run as asked (no weights to randomise, an unknown layer, a head that cannot follow)."""
