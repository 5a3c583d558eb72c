"""The exporters' helpers that need torch (the torch-free ones are in :mod:`eac.export.common`).

* :func:`require_torch` — a one-line :class:`ExportError` when the export extra is missing.
* :func:`import_factory` — resolve ``pkg.mod:factory`` strings.
* :func:`load_state_dict` / :func:`state_dict_mismatch` — read a PyTorch checkpoint
  into a module with one-line :class:`CheckpointError` messages.
* :func:`fp32_norm_class` / :func:`half_with_fp32_norms` — float16 models whose
  normalisation layers stay float32.
* :func:`onnx_export` — the one call of ``torch.onnx.export``, with the TorchScript
  exporter (why: its docstring), silencing exactly torch's deprecation of that exporter.

torch is imported lazily, inside the functions that need it, so that importing
this module (and ``eac import-onnx``, which only needs onnx) works without torch.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine.distribution import export_hint
from .common import first_line
from .errors import CheckpointError, ExportError

#: Keys under which training scripts commonly nest the state dict in a checkpoint.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
#: Prefix added by ``nn.DataParallel`` / DDP to every parameter name.
_PARALLEL_PREFIX = "module."
#: torch.nn normalisation layers kept in float32 by fp16 exports.
FP32_NORM_NAMES = ("LayerNorm", "GroupNorm")
#: The deprecation warnings torch ≥ 2.9 gives on every call of its TorchScript-based ONNX exporter (the
#: exporter's own, and its internal use of a deprecated helper): silenced by :func:`onnx_export`, nothing else.
LEGACY_EXPORTER_WARNINGS = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed\. Please remove usage of this function",
)


def require_torch(what: str = "exporting") -> None:
    """Raise a one-line :class:`ExportError` when PyTorch (the export extra) is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"{what} needs PyTorch ({first_line(exc)}); install the export extra: {export_hint()}"
        ) from exc


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
        raise ExportError(
            f"--module {spec!r}: importing {mod_name} failed ({type(exc).__name__}: {first_line(exc)})"
        ) from exc
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
        raise unreadable_checkpoint(path, exc, what, "give the state dict the model was trained to") from exc
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


#: How ``torch.load(weights_only=True)`` says a file holds pickled objects other than tensors.
_PICKLED_OBJECTS = "weights only load failed"


def unreadable_checkpoint(path: Path, exc: BaseException, what: str, fix: str) -> CheckpointError:
    """The one-line error for a checkpoint ``torch.load(..., weights_only=True)`` could not read.

    A whole pickled model (``torch.save(model)``) is named as such, with the fix (eac never unpickles code);
    anything else is a truncated or foreign file, and ``fix`` says what to give instead.
    """
    if _PICKLED_OBJECTS in str(exc).lower():
        return CheckpointError(f"{path}: the {what} holds pickled Python objects (a whole model saved with "
                               "torch.save(model)?), which eac does not load; save model.state_dict() instead")
    detail = re.sub(r"\x1b\[[0-9;]*m", "", first_line(exc))[:160]  # no terminal colour codes in the line
    return CheckpointError(f"{path}: cannot read the {what} ({type(exc).__name__}: {detail}); the file is "
                           f"truncated, corrupt or not a PyTorch state dict; {fix}")


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


def half_with_fp32_norms(module, extra_norm_names: tuple[str, ...] = (), inplace: bool = False):
    """``module`` in float16 with its normalisation layers wrapped to run in float32.

    Normalisation statistics (a mean and a variance over many channels) lose too
    much precision, or overflow, in float16; the layers around them do not.
    BatchNorm in eval mode is an affine map folded into the neighbouring
    convolution by the exporter, so it stays float16.

    Parameters
    ----------
    module : torch.nn.Module
        An fp32 model.
    extra_norm_names : tuple of str
        Class names of normalisation layers kept in fp32 besides ``torch.nn.LayerNorm``
        and ``torch.nn.GroupNorm`` (SAM's ``LayerNorm2d``; matched by name, since
        segment-anything's modules may be loaded under two package names).
    inplace : bool
        Convert ``module`` itself instead of a deep copy.

    Returns
    -------
    torch.nn.Module
        The converted model (``module`` itself when ``inplace``).
    """
    import torch

    norm_types = tuple(getattr(torch.nn, name) for name in FP32_NORM_NAMES)
    wrapper = fp32_norm_class()
    half = (module if inplace else copy.deepcopy(module)).half()

    def replace(parent) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, norm_types) or type(child).__name__ in extra_norm_names:
                setattr(parent, name, wrapper(child))
            else:
                replace(child)

    replace(half)
    return half


def onnx_export(module, args: tuple, path: str | os.PathLike, **kwargs: Any) -> None:
    """``torch.onnx.export(module, args, path, **kwargs)`` with the TorchScript ("legacy") exporter.

    Every ONNX graph eac writes goes through here. Why the TorchScript exporter and not the
    ``torch.export``-based one that torch ≥ 2.9 uses by default: every validation tolerance
    (:mod:`eac.export.spec`), graph rewrite (:mod:`eac.export.sam_graphs`, the fp16 softmax
    wrapping) and opset range (classifiers from opset 11) was established on the TorchScript
    exporter's output; the other exporter needs ``onnxscript`` (not in the export extra) and
    writes opset 18 and newer. torch deprecates the TorchScript exporter with a
    ``DeprecationWarning`` on every call (a test run printed over a hundred): exactly those
    (:data:`LEGACY_EXPORTER_WARNINGS`) are silenced here; any other warning still shows.

    Parameters
    ----------
    module : torch.nn.Module
    args : tuple
        Example inputs.
    path : path-like
        The ``.onnx`` file to write.
    **kwargs
        Passed to ``torch.onnx.export`` (names, dynamic axes, opset...).
    """
    import torch

    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # torch ≥ 2.5 has the other exporter, the default from 2.9
    with warnings.catch_warnings():
        for message in LEGACY_EXPORTER_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        torch.onnx.export(module, args, str(path), **kwargs)
