"""engine.images: decoding (gray, RGBA, 16-bit, EXIF orientation, corrupt files) and resize/crop frames."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from eac.engine.errors import ImageError
from eac.engine.images import apply_frame, list_images, load_image, resize_crop_frame, to_rgb_uint8

#: JPEG is lossy: mean absolute error allowed against the source pixels.
JPEG_MEAN_ABS_ERR = 3.0
EXIF_ORIENTATION_TAG = 0x0112
TIFF_SHORT = 3


def _rgb_pattern(h: int = 40, w: int = 60) -> np.ndarray:
    """Blocks that make every rotation and flip distinguishable: red left half, blue top-right, black rest."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 0, 255)
    return img


def _write(path: Path, bgr_or_gray: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, bgr_or_gray)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _exif_app1(orientation: int) -> bytes:
    """An APP1 segment holding a big-endian TIFF IFD with one entry: the orientation tag."""
    entry = struct.pack(">HHIHH", EXIF_ORIENTATION_TAG, TIFF_SHORT, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def test_rgb_png_roundtrip_is_exact(tmp_path):
    img = _rgb_pattern()
    got = load_image(_write(tmp_path / "a.png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR)))
    assert got.dtype == np.uint8 and got.shape == img.shape
    np.testing.assert_array_equal(got, img)


def test_bmp_and_webp(tmp_path):
    img = _rgb_pattern()
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    np.testing.assert_array_equal(load_image(_write(tmp_path / "a.bmp", bgr)), img)
    _, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # >100: lossless
    (tmp_path / "a.webp").write_bytes(buf.tobytes())
    np.testing.assert_array_equal(load_image(tmp_path / "a.webp"), img)


def test_grayscale_png(tmp_path):
    gray = np.arange(40 * 60, dtype=np.uint32).reshape(40, 60).astype(np.uint8)
    got = load_image(_write(tmp_path / "g.png", gray))
    assert got.shape == (40, 60, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], gray)


def test_rgba_png_drops_alpha(tmp_path):
    img = _rgb_pattern()
    alpha = np.full(img.shape[:2], 7, np.uint8)
    bgra = np.dstack([cv2.cvtColor(img, cv2.COLOR_RGB2BGR), alpha])
    got = load_image(_write(tmp_path / "rgba.png", bgra))
    assert got.shape == img.shape
    np.testing.assert_array_equal(got, img)


def test_16bit_png(tmp_path):
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, size=(20, 30, 3), dtype=np.uint16)
    got = load_image(_write(tmp_path / "deep.png", rgb16[..., ::-1].copy()))
    assert got.dtype == np.uint8
    expected = np.round(rgb16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    gray16 = rng.integers(0, 65536, size=(20, 30), dtype=np.uint16)
    got = load_image(_write(tmp_path / "gray16.png", gray16))
    np.testing.assert_array_equal(got[..., 1], np.round(gray16 / 257.0).astype(np.uint8))


@pytest.mark.parametrize("orientation, rot90_k", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, rot90_k):
    img = _rgb_pattern()
    _, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = buf.tobytes()
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(data[:2] + _exif_app1(orientation) + data[2:])  # APP1 right after SOI
    got = load_image(path)
    expected = np.rot90(img, k=rot90_k)
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < JPEG_MEAN_ABS_ERR


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("corrupt.jpg", b"\xff\xd8\xff\xe0 definitely not a jpeg" * 20, "corrupt"),
        ("garbage.png", bytes(range(256)) * 4, "corrupt"),
        ("empty.png", b"", "empty"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such image") as info:
        load_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(info.value)


def test_arrays():
    gray = np.full((4, 5), 9, np.uint8)
    assert load_image(gray).shape == (4, 5, 3)
    assert load_image(gray[..., None]).shape == (4, 5, 3)
    np.testing.assert_array_equal(load_image(np.ones((2, 2), bool))[..., 0], 255)
    np.testing.assert_array_equal(load_image(np.full((2, 2, 3), 0.5))[0, 0], [128, 128, 128])
    np.testing.assert_array_equal(to_rgb_uint8(np.full((2, 2, 3), 65535, np.uint16)), 255)
    for bad in (np.zeros((2, 2, 2), np.uint8), np.zeros((0, 3, 3), np.uint8), np.full((2, 2), 1.5),
                np.full((2, 2), np.nan), np.zeros((2, 2), np.complex64)):
        with pytest.raises(ImageError):
            load_image(bad)


def test_resize_crop_frame_rounding():
    # wide: shorter side 100 → 256, longer int(256 * 150 / 100) = 384; offsets round(16), round(80)
    f = resize_crop_frame((100, 150), 256, 224)
    assert f.resized_hw == (256, 384) and f.box == (16, 80, 224, 224) and f.hw == (224, 224)
    # tall, odd: int(256 * 301 / 200) = 385; (385 - 224) / 2 = 80.5 → round() = 80 (banker's rounding, as torchvision)
    f = resize_crop_frame((301, 200), 256, 224)
    assert f.resized_hw == (385, 256) and f.box == (80, 16, 224, 224)
    f = resize_crop_frame((50, 60), None, (40, 30))
    assert f.resized_hw == (50, 60) and f.box == (5, 15, 40, 30)
    assert resize_crop_frame((50, 60), None, None) == resize_crop_frame((50, 60), None, None)
    with pytest.raises(ImageError, match="larger"):
        resize_crop_frame((50, 60), None, 55)


def test_apply_frame_crops_the_resized_image():
    img = np.arange(100 * 150 * 3, dtype=np.uint32).reshape(100, 150, 3).astype(np.uint8)
    frame = resize_crop_frame(img.shape[:2], None, 64)
    np.testing.assert_array_equal(apply_frame(img, frame), img[18:82, 43:107])
    frame = resize_crop_frame(img.shape[:2], 50, 40)
    crop = apply_frame(img, frame)
    resized = cv2.resize(img, (75, 50), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crop, resized[5:45, 18:58])


def test_list_images(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", "c.webp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    found = list_images([tmp_path, tmp_path / "extra.bmp"])
    assert [p.name for p in found] == ["a.JPG", "b.png", "c.webp", "extra.bmp"]
