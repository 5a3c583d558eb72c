"""COCO RLE in numpy (:mod:`eac.kernels.rle`) against pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from eac.kernels import rle

mask_api = pytest.importorskip("pycocotools.mask")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    single = np.zeros((7, 5), bool)
    single[3, 2] = True
    corner = np.zeros((4, 6), bool)
    corner[0, 0] = True
    blob = np.zeros((64, 48), bool)
    blob[10:40, 5:30] = True
    return {
        "random": rng.random((37, 23)) < 0.5,
        "sparse": rng.random((50, 61)) < 0.02,
        "empty": np.zeros((9, 11), bool),
        "full": np.ones((9, 11), bool),
        "single_pixel": single,
        "first_pixel": corner,
        "blob": blob,
        "one_row": rng.random((1, 40)) < 0.5,
        "one_column": rng.random((40, 1)) < 0.5,
        "large_runs": np.pad(np.ones((300, 300), bool), ((0, 0), (500, 0))),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_encode_matches_pycocotools(name):
    mask = CASES[name]
    ours = rle.encode(mask)
    theirs = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["size"] == [int(s) for s in theirs["size"]]
    assert ours["counts"] == theirs["counts"].decode("ascii")


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_both_ways(name):
    mask = CASES[name]
    ours = rle.encode(mask)
    np.testing.assert_array_equal(rle.decode(ours), mask)
    # pycocotools decodes our RLE (str counts) and we decode theirs (bytes counts)
    np.testing.assert_array_equal(mask_api.decode(ours).astype(bool), mask)
    theirs = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    np.testing.assert_array_equal(rle.decode(theirs), mask)
    assert int(mask_api.area(theirs)) == int(mask.sum())


@pytest.mark.parametrize("name", ["random", "single_pixel", "full", "empty"])
def test_uncompressed_list_form(name):
    mask = CASES[name]
    h, w = mask.shape
    runs = rle.mask_runs(mask).tolist()
    uncompressed = {"size": [h, w], "counts": runs}
    np.testing.assert_array_equal(rle.decode(uncompressed), mask)
    compressed = mask_api.frPyObjects(uncompressed, h, w)
    assert rle.encode(mask)["counts"] == compressed["counts"].decode("ascii")


def test_many_masks_and_errors():
    rng = np.random.default_rng(1)
    masks = rng.random((5, 16, 12)) < 0.3
    rles = rle.encode_masks(masks)
    np.testing.assert_array_equal(rle.decode_masks(rles), masks)
    theirs = mask_api.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in rles] == [t["counts"].decode("ascii") for t in theirs]
    assert rle.decode_masks([], hw=(16, 12)).shape == (0, 16, 12)
    with pytest.raises(ValueError, match="cover"):
        rle.decode({"size": [4, 4], "counts": [3, 2]})
    with pytest.raises(ValueError, match="not part"):
        rle.decode({"size": [4, 4], "counts": "0 "})
    with pytest.raises(ValueError, match="not a COCO RLE"):
        rle.decode({"counts": "0"})
    with pytest.raises(ValueError, match="different sizes"):
        rle.decode_masks([rle.encode(masks[0]), rle.encode(masks[0, :8])])
