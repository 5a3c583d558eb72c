"""The parameters of ``POST /v1/explanations``: the form's fields, checked (400 on anything wrong).

The image travels as a multipart file part ``image``; the other fields are text:
``target`` (class index or label), ``method``, ``evaluations``, ``seed``,
``top_k``. :func:`parse_request` turns them into an :class:`ExplainRequest` or
raises a :class:`~eac.engine.serve.limits.ServiceError` (400, one line). The
image's bytes are decoded later, in the request's thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .limits import bad_request
from .settings import ServeSettings

#: Form fields of ``POST /v1/explanations`` besides ``image``.
FIELDS = ("target", "method", "evaluations", "seed", "top_k")
#: Concepts drawn on a result's overlay unless the request says otherwise; the most it may ask for.
DEFAULT_TOP_K = 5
MAX_TOP_K = 64
#: Largest seed (numpy's generators take any non-negative integer; this keeps it a JSON-safe int64).
MAX_SEED = 2**63 - 1
#: Characters of an upload's file name kept for error messages.
MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class ExplainRequest:
    """One request's checked parameters.

    Attributes
    ----------
    image : bytes
        The uploaded image file (decoded in the request's thread).
    name : str
        The upload's file name (for error messages).
    target : int, str or None
        Class index or label (None: top-1).
    method : str or None
        Registered method (None: the service's).
    evaluations : int or None
        The method's evaluation budget (None: the service's).
    seed : int or None
        None: the service's.
    top_k : int
        Concepts drawn on the overlay.
    """

    image: bytes
    name: str = "image"
    target: int | str | None = None
    method: str | None = None
    evaluations: int | None = None
    seed: int | None = None
    top_k: int = DEFAULT_TOP_K


def _integer(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {text[:40]!r}") from None
    if not low <= value <= high:
        raise bad_request(f"{name} must lie in {low}..{high}, got {value}")
    return value


def parse_request(image: bytes | None, name: str | None, fields: Mapping[str, str], settings: ServeSettings,
                  method_names: tuple[str, ...]) -> ExplainRequest:
    """Check a request's form fields; :class:`ServiceError` (400, one line) on anything wrong.

    Parameters
    ----------
    image : bytes or None
        The ``image`` file's content (None: no such part).
    name : str or None
        Its file name.
    fields : mapping of str to str
        The other form fields (see :data:`FIELDS`).
    settings : ServeSettings
        The limits (``max_evaluations``).
    method_names : tuple of str
        Registered methods.
    """
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise bad_request(f"unknown form field(s) {', '.join(unknown)}; the fields are image, {', '.join(FIELDS)}")
    if image is None:
        raise bad_request("no image: send the image file as the multipart form field 'image'")
    values: dict[str, Any] = {}
    if fields.get("target", "").strip():
        text = fields["target"].strip()
        values["target"] = int(text) if text.lstrip("-").isdigit() else text
    if fields.get("method", "").strip():
        method = fields["method"].strip()
        if method not in method_names:
            raise bad_request(f"unknown method {method[:40]!r}; choose one of {', '.join(method_names)}")
        values["method"] = method
    if fields.get("evaluations", "").strip():
        values["evaluations"] = _integer("evaluations", fields["evaluations"], 1, settings.max_evaluations)
    if fields.get("seed", "").strip():
        values["seed"] = _integer("seed", fields["seed"], 0, MAX_SEED)
    if fields.get("top_k", "").strip():
        values["top_k"] = _integer("top_k", fields["top_k"], 1, MAX_TOP_K)
    return ExplainRequest(image=image, name=(name or "image")[:MAX_NAME_CHARS], **values)
