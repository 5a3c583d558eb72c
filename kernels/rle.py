"""COCO run-length encoding of boolean masks, in numpy (no pycocotools needed).

The format is the one pycocotools reads and writes (``pycocotools.mask``)::

    {"size": [h, w], "counts": "<compressed string>"}

The mask is read in column-major (Fortran) order, top to bottom then left to
right; ``counts`` holds the lengths of alternating runs of 0s and 1s, always
starting with a (possibly empty) run of 0s. The *compressed* form writes the
runs as a string: each run (from the fourth on, as the difference to the run
two places earlier) is cut into 5-bit groups, least significant first, each
group written as one character ``48 + group`` with bit 0x20 set while more
groups follow and bit 0x10 the sign of the last one. The *uncompressed* form
keeps ``counts`` as a list of integers (``iscrowd`` annotations in COCO files);
:func:`decode` reads both, :func:`encode` writes the compressed form.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

#: Offset added to every 5-bit group of the compressed string (ASCII "0").
CHAR_OFFSET = 48
#: Bits of a run length written per character.
GROUP_BITS = 5
GROUP_MASK = 0x1F
#: Set in a character when more groups of the same run follow.
MORE_BIT = 0x20
#: Sign bit of a run's last group.
SIGN_BIT = 0x10
#: Runs before this index are written as they are; later ones as the difference
#: to the run two places earlier (same value, so usually small).
DELTA_FROM = 3


def mask_runs(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a boolean H×W mask in column-major order, starting with 0s.

    Parameters
    ----------
    mask : ndarray, H×W
        Boolean (or 0/nonzero) mask.

    Returns
    -------
    ndarray of int64
        Alternating run lengths of 0s and 1s (the first may be 0); empty for an
        empty (0-pixel) mask.

    Raises
    ------
    ValueError
        ``mask`` is not two-dimensional.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an H×W mask, got shape {mask.shape}")
    flat = mask.astype(bool, copy=False).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, np.int64)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).astype(np.int64)
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return runs


def runs_to_string(runs: Iterable[int]) -> str:
    """The compressed COCO string of run lengths (pycocotools' ``rleToString``).

    Parameters
    ----------
    runs : iterable of int
        Run lengths as :func:`mask_runs` gives them.

    Returns
    -------
    str
        ASCII characters from ``"0"`` (48) to ``"o"`` (111).
    """
    counts = [int(c) for c in runs]
    out = bytearray()
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i >= DELTA_FROM else value
        more = True
        while more:
            c = x & GROUP_MASK
            x >>= GROUP_BITS  # arithmetic shift: negative differences end at -1
            more = x != -1 if c & SIGN_BIT else x != 0
            if more:
                c |= MORE_BIT
            out.append(c + CHAR_OFFSET)
    return out.decode("ascii")


def string_to_runs(text: str | bytes) -> np.ndarray:
    """Run lengths of a compressed COCO string (pycocotools' ``rleFrString``).

    Parameters
    ----------
    text : str or bytes

    Returns
    -------
    ndarray of int64

    Raises
    ------
    ValueError
        A character outside the format, or a string that ends inside a run.
    """
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("COCO RLE string ends inside a run")
            c = data[p] - CHAR_OFFSET
            if not 0 <= c < 2 * MORE_BIT:
                raise ValueError(f"character {chr(data[p])!r} is not part of a COCO RLE string")
            x |= (c & GROUP_MASK) << (GROUP_BITS * k)
            more = bool(c & MORE_BIT)
            p += 1
            k += 1
            if not more and c & SIGN_BIT:
                x |= -1 << (GROUP_BITS * k)
        if len(counts) >= DELTA_FROM:
            x += counts[-2]
        counts.append(x)
    return np.asarray(counts, dtype=np.int64)


def encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE (compressed string form) of one boolean H×W mask.

    Parameters
    ----------
    mask : ndarray, H×W
        Boolean (or 0/nonzero) mask.

    Returns
    -------
    dict
        ``{"size": [h, w], "counts": str}``, what ``pycocotools.mask.encode``
        returns with ``counts`` decoded to ``str``.
    """
    mask = np.asarray(mask)
    runs = mask_runs(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs_to_string(runs)}


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """The boolean H×W mask of a COCO RLE (compressed string or uncompressed list).

    Parameters
    ----------
    rle : mapping
        ``{"size": [h, w], "counts": str | bytes | list of int}``.

    Returns
    -------
    ndarray of bool, H×W

    Raises
    ------
    ValueError
        Missing keys, negative runs, or runs that do not add up to h·w.
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a COCO RLE: expected {{'size': [h, w], 'counts': ...}} ({exc})") from exc
    if h < 0 or w < 0:
        raise ValueError(f"COCO RLE size {[h, w]} is negative")
    if isinstance(counts, (str, bytes, bytearray)):
        runs = string_to_runs(counts)
    else:
        runs = np.asarray(list(counts), dtype=np.int64)
    if runs.size and runs.min() < 0:
        raise ValueError("COCO RLE has a negative run length")
    if int(runs.sum()) != h * w:
        raise ValueError(f"COCO RLE runs cover {int(runs.sum())} pixels, the size says {h}×{w} = {h * w}")
    values = np.arange(runs.size) % 2 == 1
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T.copy() if h * w else np.zeros((h, w), bool)


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLEs of N×H×W boolean masks (one dict per mask, in order)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected N×H×W masks, got shape {masks.shape}")
    return [encode(m) for m in masks]


def decode_masks(rles: Iterable[Mapping[str, Any]], hw: tuple[int, int] | None = None) -> np.ndarray:
    """N×H×W boolean masks of a sequence of COCO RLEs.

    Parameters
    ----------
    rles : iterable of mapping
        Every RLE must have the same size.
    hw : (int, int), optional
        The size of the masks when ``rles`` is empty (the result is then 0×H×W;
        0×0×0 when not given).

    Returns
    -------
    ndarray of bool, N×H×W

    Raises
    ------
    ValueError
        An invalid RLE, or RLEs of different sizes.
    """
    masks = [decode(r) for r in rles]
    if not masks:
        h, w = hw if hw is not None else (0, 0)
        return np.zeros((0, int(h), int(w)), bool)
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise ValueError(f"COCO RLEs of different sizes: {sorted(shapes)}")
    return np.stack(masks)
