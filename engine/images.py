"""Reading images and the geometric preprocessing every model shares.

Images enter eac as H×W×3 ``uint8`` RGB arrays. :func:`load_image` accepts
files (JPEG, PNG, WebP, BMP, TIFF) and arrays; it converts grayscale, RGBA and
16-bit inputs and respects EXIF orientation (opencv applies it when decoding).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .concepts import Frame
from .errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: Largest image accepted by default, in pixels (100 megapixels, ≈ 300 MB as RGB uint8).
DEFAULT_MAX_PIXELS = 100_000_000


def to_rgb_uint8(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert an image array to H×W×3 ``uint8`` RGB.

    Accepts H×W (gray), H×W×1, H×W×3 (RGB) and H×W×4 (RGBA; alpha dropped),
    as ``uint8``, ``uint16`` (scaled by 1/257), bool, or floats in [0, 1].
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageError(f"{name}: expected an H×W, H×W×3 or H×W×4 image, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{name}: empty image (shape {array.shape})")
    array = array[:, :, :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return np.ascontiguousarray((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{name}: image has NaN or infinite values")
        if array.min() < 0 or array.max() > 1:
            raise ImageError(f"{name}: float images must lie in [0, 1] (got {array.min():.3g}..{array.max():.3g})")
        return np.round(array * 255).astype(np.uint8)
    raise ImageError(f"{name}: unsupported image dtype {array.dtype}")


def load_image(source: str | os.PathLike | np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load an image file (or take an array) as H×W×3 ``uint8`` RGB.

    An H×W×3 ``uint8`` array is returned as it is (no copy).

    Raises
    ------
    ImageError
        Missing, unreadable, corrupt or too large file (more than ``max_pixels``),
        or an unsupported array.
    """
    if isinstance(source, np.ndarray):
        _check_pixels(source.shape[:2], max_pixels, "image")
        return to_rgb_uint8(source)
    path = Path(source)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file; give one image "
                         "(`eac explain FOLDER` explains every image of a folder)")
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc})") from exc
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    # IMREAD_COLOR | IMREAD_ANYDEPTH keeps 16-bit data and applies EXIF orientation
    # (IMREAD_UNCHANGED would ignore orientation).
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as exc:  # opencv refuses images above its own pixel limit this way
        raise ImageError(f"{path}: opencv cannot decode it (too large or corrupt: {str(exc).strip().splitlines()[-1]})"
                         ) from exc
    if decoded is None:
        raise ImageError(f"{path}: corrupt or unsupported image (opencv could not decode it)")
    _check_pixels(decoded.shape[:2], max_pixels, str(path))
    rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return to_rgb_uint8(rgb, name=str(path))


def _check_pixels(hw: tuple[int, ...], max_pixels: int, name: str) -> None:
    if len(hw) == 2 and int(hw[0]) * int(hw[1]) > max_pixels:
        raise ImageError(f"{name}: {hw[1]}×{hw[0]} pixels is more than the limit of {max_pixels} "
                         "(--max-pixels raises it)")


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize H×W×C to ``hw`` with the one rule every model's preprocessing shares:
    area averaging when shrinking (close to antialiased bilinear), bilinear when enlarging."""
    h, w = int(hw[0]), int(hw[1])
    if (h, w) == image.shape[:2]:
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_crop_frame(hw: tuple[int, int], resize: int | None, crop: int | tuple[int, int] | None) -> Frame:
    """The :class:`Frame` of "resize the shorter side to ``resize``, centre-crop ``crop``".

    ``resize=None`` keeps the size; ``crop=None`` keeps the whole resized image.
    Rounding follows torchvision: the longer side is ``int(resize * long / short)``
    and the crop offsets are ``round((size - crop) / 2)``.
    """
    h, w = int(hw[0]), int(hw[1])
    if resize is None:
        rh, rw = h, w
    elif h <= w:
        rh, rw = int(resize), int(resize * w / h)
    else:
        rh, rw = int(resize * h / w), int(resize)
    if crop is None:
        ch, cw = rh, rw
    else:
        ch, cw = (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
    if ch > rh or cw > rw:
        raise ImageError(f"crop {ch}×{cw} is larger than the resized image {rh}×{rw}")
    top = round((rh - ch) / 2.0)
    left = round((rw - cw) / 2.0)
    return Frame((h, w), (rh, rw), (top, left, ch, cw))


def apply_frame(image: np.ndarray, frame: Frame) -> np.ndarray:
    """Resize ``image`` (H×W×C) as ``frame`` says and return the crop (h×w×C).

    Downscaling uses area interpolation (close to antialiased bilinear),
    upscaling bilinear.
    """
    image = resize_image(image, frame.resized_hw)
    top, left, h, w = frame.box
    return np.ascontiguousarray(image[top : top + h, left : left + w])


def list_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted list of image files."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(p)
    return found
