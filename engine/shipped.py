"""Names for the models shipped inside the package, and the one function every command resolves them with.

A command that takes a model folder (``--classifier``, ``--sam``) also takes the name of a
model shipped in the package: ``demo`` is the small scene classifier of ``eac demo``
(:func:`eac.engine.demo.demo_classifier_path`) or the SAM trained on the same generated
scenes (:func:`eac.engine.demo.demo_sam_path`). A shipped name means the shipped model even
when the working folder holds a folder of that name (``eac demo``'s output, say): such a
folder is named as a path, ``./demo``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .demo import demo_classifier_path, demo_sam_path
from .errors import ConfigError, ModelFolderError

#: Model kinds → shipped name → the function giving that model's folder inside the package.
SHIPPED_MODELS: dict[str, dict[str, Callable[[], Path]]] = {
    "classifier": {"demo": demo_classifier_path},
    "sam": {"demo": demo_sam_path},
}


def shipped_names(kind: str) -> tuple[str, ...]:
    """The names of the shipped models of ``kind`` (``"classifier"`` or ``"sam"``)."""
    return tuple(_shipped(kind))


def _shipped(kind: str) -> dict[str, Callable[[], Path]]:
    if kind not in SHIPPED_MODELS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {', '.join(SHIPPED_MODELS)}")
    return SHIPPED_MODELS[kind]


def resolve_model_folder(kind: str, name_or_path: str | os.PathLike) -> Path:
    """The model folder a command-line value names: an existing folder, or a shipped model's name.

    Parameters
    ----------
    kind : {"classifier", "sam"}
        What the folder must hold (checked later, when the folder is loaded).
    name_or_path : str or path-like
        A name from :func:`shipped_names` (exactly), or a folder (``~`` expanded).

    Returns
    -------
    Path
        The folder (not yet checked to hold a model of ``kind``).

    Raises
    ------
    ConfigError
        ``kind`` is not a model kind.
    ModelFolderError
        Neither an existing folder nor a shipped name (the message lists the names), a file
        where a folder is expected, or a shipped name whose folder this install lacks.
    """
    shipped = _shipped(kind)
    names = ", ".join(shipped)
    if isinstance(name_or_path, str) and name_or_path in shipped:
        folder = shipped[name_or_path]()
        if not folder.is_dir():
            raise ModelFolderError(f"the shipped {kind} {name_or_path!r} is not in this install (no {folder}); "
                                   f"give a {kind} folder instead (a folder of that name: ./{name_or_path})")
        return folder
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        adopt = (f"; an ONNX classifier of your own becomes a folder with `eac import-onnx {path} --out FOLDER`"
                 if kind == "classifier" and path.suffix.lower() == ".onnx" else "")
        raise ModelFolderError(f"{path}: is a file, not a model folder; give a {kind} folder or a shipped "
                               f"{kind} name ({names}){adopt}")
    raise ModelFolderError(f"{path}: no such model folder, and not the name of a shipped {kind} ({names})")


__all__ = ["SHIPPED_MODELS", "resolve_model_folder", "shipped_names"]
