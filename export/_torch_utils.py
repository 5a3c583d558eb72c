"""Helpers shared by the classifier exporters.

* :class:`StagedFolder` — write an output folder atomically (a hidden temporary
  sibling renamed at the end; nothing half-written is left behind).
* :func:`import_factory` — resolve ``pkg.mod:factory`` strings.
* :func:`load_state_dict` — read a PyTorch checkpoint into a module with
  one-line :class:`CheckpointError` messages.
* :func:`read_labels` — class names from a text file.

torch is imported lazily, inside the functions that need it, so that
``eac import-onnx`` (which only needs onnx) works without torch.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ExportError

#: Keys under which training scripts commonly nest the state dict in a checkpoint.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
#: Prefix added by ``nn.DataParallel`` / DDP to every parameter name.
_PARALLEL_PREFIX = "module."
#: Mode of a finished output folder before the umask is applied (as ``mkdir``).
_FOLDER_MODE = 0o777


def first_line(exc: BaseException) -> str:
    """First non-empty line of an exception message (or its type name)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class StagedFolder:
    """An output folder written under a temporary name and renamed when complete.

    Use as a context manager: ``with StagedFolder(out) as tmp: ...write into tmp...;
    staged.commit()``. Leaving the block without :meth:`commit` (an exception)
    removes the temporary folder. The final folder must not exist or be empty.

    Raises
    ------
    ExportError
        ``out`` exists and is not an empty folder, or its parent cannot be written.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path: Path | None = None
        self.committed = False

    def __enter__(self) -> Path:
        out = self.out
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ExportError(f"{out}: output exists and is not an empty folder; choose another --out or remove it")
        parent = out.parent if str(out.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
        except OSError as exc:
            raise ExportError(f"{out}: cannot create the output folder ({exc.strerror or first_line(exc)})") from exc
        return self.path

    def commit(self) -> Path:
        """Rename the temporary folder to its final name."""
        if self.path is None:
            raise RuntimeError("StagedFolder.commit() called outside its with-block")
        try:
            # mkdtemp creates the folder 0700; give it the permissions a plain mkdir would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.path, _FOLDER_MODE & ~umask)
            if self.out.is_dir():
                self.out.rmdir()  # empty (checked on entry)
            os.replace(self.path, self.out)
        except OSError as exc:
            raise ExportError(f"{self.out}: cannot move the finished export into place ({first_line(exc)})") from exc
        self.committed = True
        return self.out

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


def import_factory(spec: str) -> Callable[[], Any]:
    """Resolve ``"pkg.mod:factory"`` (the factory may be a dotted attribute path).

    The current directory is tried as an import root when the module is not
    found otherwise (the ``eac`` console script does not put it on ``sys.path``).

    Raises
    ------
    ExportError
        Malformed spec, module not importable, or attribute missing / not callable.
    """
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise ExportError(f"--module {spec!r}: expected PKG.MODULE:FACTORY, e.g. mypkg.models:build_resnet")
    mod_name, attr_path = spec.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        missing_top = exc.name is not None and mod_name.split(".")[0] == exc.name.split(".")[0]
        if not missing_top or cwd in sys.path:
            raise ExportError(f"--module {spec!r}: cannot import {mod_name} ({first_line(exc)})") from exc
        sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc2:
            raise ExportError(f"--module {spec!r}: cannot import {mod_name} ({first_line(exc2)})") from exc2
        finally:
            if sys.path and sys.path[0] == cwd:
                sys.path.pop(0)
    except Exception as exc:  # the module itself raised while importing
        raise ExportError(f"--module {spec!r}: importing {mod_name} failed ({type(exc).__name__}: {first_line(exc)})") from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ExportError(f"--module {spec!r}: {mod_name} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ExportError(f"--module {spec!r}: {attr_path} is not callable")
    return obj


def load_state_dict(model, path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Load a state dict file into ``model`` (strictly).

    Accepts a bare state dict, or a dict nesting it under ``state_dict``,
    ``model_state_dict`` or ``model``; strips the ``module.`` prefix of
    DataParallel checkpoints.

    Returns
    -------
    dict
        ``{"path", "bytes", "tensors"}`` describing what was loaded.

    Raises
    ------
    CheckpointError
        Missing, truncated or unreadable file, or keys/shapes that do not match the model.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        raise CheckpointError(
            f"{path}: cannot read the {what} ({type(exc).__name__}: {first_line(exc)}); the file is truncated, "
            "corrupt, or not a PyTorch state dict"
        ) from exc
    if isinstance(state, dict):
        for key in _NESTED_STATE_KEYS:
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the {what} is not a state dict (name → tensor)")
    if state and all(k.startswith(_PARALLEL_PREFIX) for k in state):
        state = {k[len(_PARALLEL_PREFIX):]: v for k, v in state.items()}
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"{path}: the {what} does not fit this model: {problems}; is it a checkpoint of another architecture?"
        )
    model.load_state_dict(state, strict=True)
    return {"path": str(path), "bytes": path.stat().st_size, "tensors": len(state)}


def state_dict_mismatch(expected: dict, state: dict) -> str | None:
    """Why ``state`` cannot be loaded strictly into a model whose state dict is ``expected``.

    Returns None when every key is present with the same shape and nothing is extra,
    else a short description (counts and one example of missing, unexpected and
    wrongly shaped tensors).
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(parts) or None


def fp32_norm_class():
    """The ``Fp32Norm`` module class: a normalisation layer run in float32 inside a float16 model.

    Built on first use so importing this module does not import torch.
    """
    global _FP32_NORM
    if _FP32_NORM is None:
        import torch

        class Fp32Norm(torch.nn.Module):
            """Runs a normalisation module in fp32 inside an fp16 model (input cast up, output cast back)."""

            def __init__(self, inner):
                super().__init__()
                self.inner = inner.float()

            def forward(self, x):
                return self.inner(x.float()).to(x.dtype)

        _FP32_NORM = Fp32Norm
    return _FP32_NORM


_FP32_NORM = None


def read_labels(path: str | os.PathLike | None) -> list[str] | None:
    """Class names from a text file, one per line (blank lines at the end ignored)."""
    if path is None:
        return None
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read the labels file ({first_line(exc)})") from exc
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise ExportError(f"{path}: the labels file is empty; give one class name per line")
    return labels
