"""Recent results in memory (an LRU of bounded size) and the files served for them.

Results live only in memory, under random ids (:func:`new_id`) that never touch
the filesystem; the oldest is forgotten when the store is full. Each stored
result holds its :class:`~eac.engine.explanation.Explanation` (the crop and the
N concept masks: about h·w·(3 + N) bytes). The files are made on request:

- the overlay PNG by :func:`overlay_png` — the drawing ``Explanation.save``
  writes as ``overlay.png`` (one function to re-point if that drawing moves);
- ``masks.npz`` by :func:`masks_npz` — the layout ``Explanation.save`` writes
  (bit-packed masks, their shape, the id), plain arrays only: it loads with
  ``numpy.load(..., allow_pickle=False)``;
- the crop PNG by :func:`crop_png`.
"""

from __future__ import annotations

import collections
import io
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import ImageError

#: Random bytes of a result id (URL-safe base64: 22 characters).
ID_BYTES = 16
#: What a result id looks like; anything else is not looked up at all.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")


def new_id() -> str:
    """A fresh random result id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(ID_BYTES)


@dataclass(frozen=True)
class StoredResult:
    """One answered request: its id, explanation and overlay size."""

    id: str
    explanation: Any
    top_k: int


class ResultStore:
    """The last ``capacity`` results by id, least recently used forgotten first; thread-safe.

    Parameters
    ----------
    capacity : int
        Results kept.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._items: collections.OrderedDict[str, StoredResult] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, result: StoredResult) -> None:
        with self._lock:
            self._items[result.id] = result
            self._items.move_to_end(result.id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, result_id: str) -> StoredResult | None:
        """The result, or None (unknown, forgotten, or not an id at all)."""
        if not ID_PATTERN.match(result_id):
            return None
        with self._lock:
            result = self._items.get(result_id)
            if result is not None:
                self._items.move_to_end(result_id)
            return result

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _png(image_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image_bgr)
    if not ok:
        raise ImageError("opencv could not encode the PNG")
    return buf.tobytes()


def overlay_png(explanation: Any, top_k: int, target_index: int = 0) -> bytes:
    """The overlay ``Explanation.save`` writes as ``overlay.png``, as PNG bytes."""
    from ..render.overlay import render_overlay

    return _png(render_overlay(explanation, top_k=top_k, target_index=target_index))


def crop_png(explanation: Any) -> bytes:
    """The explained crop (the classifier's input frame), as PNG bytes."""
    return _png(cv2.cvtColor(np.ascontiguousarray(explanation.crop), cv2.COLOR_RGB2BGR))


def masks_npz(explanation: Any, result_id: str) -> bytes:
    """``masks.npz`` as ``Explanation.save`` writes it (``packed``, ``shape``, ``save_id`` = the id)."""
    masks = np.asarray(explanation.masks, dtype=bool)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, packed=np.packbits(masks.reshape(-1)), shape=np.array(masks.shape, dtype=np.int64),
                        save_id=np.array(result_id))
    return buffer.getvalue()
