"""The distribution eac is installed as, and the one place messages say how to install a part of it.

PyPI's name ``eac`` belongs to an unrelated package (2016), so eac is distributed as
:data:`DISTRIBUTION` (``explain-any-concept``); the import root ``eac`` and the ``eac``
command keep their names. Every message that tells the user what to install is built by
:func:`install_hint` (and :func:`upgrade_hint`), so none spells the name by hand, and each
also says how to do the same from a source checkout. :func:`installed_version` reads the
distribution's own metadata.
"""

from __future__ import annotations

#: The distribution's name (``pip install explain-any-concept``; ``import eac``; the ``eac`` command).
DISTRIBUTION = "explain-any-concept"
#: What ``installed_version`` says when eac runs from a checkout that was never installed.
UNKNOWN_VERSION = "unknown"
#: Said with every hint to install the export extra: an unpinned torch pulls a multi-GB CUDA build.
TORCH_NOTE = "on machines without an NVIDIA GPU install a CPU build of torch first (see the README)"


def install_hint(*extras: str, note: str | None = None) -> str:
    """How to install ``extras`` (none: the base package), for an installed copy and for a source checkout.

    Parameters
    ----------
    *extras : str
        pyproject extras (``"cpu"``, ``"export"``...).
    note : str, optional
        Added after the checkout variant (e.g. how to pin torch).

    Returns
    -------
    str
        ``pip install 'explain-any-concept[cpu]' (from a source checkout: pip install '.[cpu]')``.
    """
    suffix = f"[{','.join(extras)}]" if extras else ""
    extra_note = f"; {note}" if note else ""
    return f"pip install '{DISTRIBUTION}{suffix}' (from a source checkout: pip install '.{suffix}'{extra_note})"


def export_hint() -> str:
    """How to install the export extra (PyTorch, segment-anything), with the note on pinning torch."""
    return install_hint("export", note=TORCH_NOTE)


def upgrade_hint() -> str:
    """How to upgrade eac: ``pip install -U explain-any-concept`` (a checkout: pull and reinstall)."""
    return f"pip install -U {DISTRIBUTION} (from a source checkout: pull, then pip install .)"


def installed_version() -> str:
    """The installed distribution's version, or :data:`UNKNOWN_VERSION` for a checkout never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN_VERSION


__all__ = ["DISTRIBUTION", "TORCH_NOTE", "UNKNOWN_VERSION", "export_hint", "install_hint", "installed_version",
           "upgrade_hint"]
