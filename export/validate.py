"""Comparison of ONNX Runtime outputs with PyTorch outputs.

Every exporter runs its graph on inputs different from the tracing inputs and
calls :func:`compare_outputs`: names first, then shapes, then values, each
output against its own tolerance from the model's :class:`~eac.export.spec.ExportSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import ValidationError


def compare_outputs(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    tolerances: Mapping[str, float],
    model: str = "model",
) -> dict[str, float]:
    """Check ONNX outputs against reference outputs.

    Parameters
    ----------
    expected : mapping of str to ndarray
        PyTorch outputs by name.
    actual : mapping of str to ndarray
        ONNX Runtime outputs by name.
    tolerances : mapping of str to float
        Largest allowed absolute difference per output name.
    model : str
        Name used in messages.

    Returns
    -------
    dict of str to float
        Max absolute difference per output (what manifests record).

    Raises
    ------
    ValidationError
        Missing/extra outputs, a shape mismatch, non-finite values where PyTorch
        has finite ones, or a difference above tolerance (reports where).
    """
    if set(expected) != set(actual):
        raise ValidationError(
            f"{model}: output names differ: PyTorch {sorted(expected)}, ONNX {sorted(actual)}", kind="names"
        )
    result: dict[str, float] = {}
    for name, ref in expected.items():
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(actual[name], dtype=np.float64)
        if ref.shape != got.shape:
            raise ValidationError(
                f"{model}: output {name!r} has shape {got.shape} in ONNX but {ref.shape} in PyTorch",
                output=name, kind="shape",
            )
        tol = float(tolerances[name])
        if ref.size == 0:
            result[name] = 0.0
            continue
        bad_finite = np.isfinite(ref) & ~np.isfinite(got)
        if bad_finite.any():
            where = tuple(int(i) for i in np.argwhere(bad_finite)[0])
            raise ValidationError(
                f"{model}: output {name!r} is not finite in ONNX at {where} (PyTorch: {ref[where]:.6g})",
                output=name, kind="values", max_abs_diff=float("inf"), index=where, tolerance=tol,
            )
        diff = np.abs(np.where(np.isfinite(ref), ref - got, 0.0))
        flat = int(np.argmax(diff))
        where = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
        worst = float(diff.flat[flat])
        if worst > tol:
            raise ValidationError(
                f"{model}: output {name!r} differs from PyTorch by {worst:.3g} at {where} "
                f"(PyTorch {ref[where]:.6g}, ONNX {got[where]:.6g}; tolerance {tol:g})",
                output=name, kind="values", max_abs_diff=worst, index=where, tolerance=tol,
            )
        result[name] = worst
    return result


def check_io_names(session, inputs: Sequence[str], outputs: Sequence[str], model: str = "model") -> None:
    """Raise :class:`ValidationError` when an ORT session's I/O names differ from the spec."""
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if list(got_in) != list(inputs) or list(got_out) != list(outputs):
        raise ValidationError(
            f"{model}: graph I/O names are inputs {got_in} / outputs {got_out}, "
            f"expected {list(inputs)} / {list(outputs)}",
            kind="names",
        )
