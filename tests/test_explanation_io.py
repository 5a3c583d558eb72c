"""Explanation.save / load: exact round trip, overlay and cut-outs on disk."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from eac.engine.errors import ExplainError
from eac.engine.explain import explain
from eac.engine.explanation import OVERLAY_SCALE, Explanation

from .explainer_fakes import FakeClassifier, grid_masks, random_image


@pytest.fixture(scope="module")
def expl():
    clf = FakeClassifier(seed=1, scale=3.0)
    return explain(random_image(seed=2), clf, grid_masks(rows=4, cols=5), method="eac", target=[1, "class3"])


def test_round_trip_is_exact(expl, tmp_path):
    path = expl.save(tmp_path / "out", top_k=3)
    assert path.name == "explanation.json"
    back = Explanation.load(tmp_path / "out")
    np.testing.assert_array_equal(back.values, expl.values)  # bit-exact, not approximately
    np.testing.assert_array_equal(back.stderr, expl.stderr)
    np.testing.assert_array_equal(back.masks, expl.masks)
    np.testing.assert_array_equal(back.crop, expl.crop)
    np.testing.assert_array_equal(back.ranking, expl.ranking)
    assert back.targets == [1, 3] and back.labels == ["class1", "class3"]
    assert back.probabilities == expl.probabilities and back.timings == expl.timings
    assert back.method == "eac" and back.value_type == "shapley"
    assert back.num_evaluations == expl.num_evaluations and back.provider == "FakeProvider"
    assert back.settings == json.loads(json.dumps(expl.settings))
    assert back.frame == expl.frame and back.frame is not None
    again = Explanation.load(path)  # the JSON file itself works too
    np.testing.assert_array_equal(again.values, expl.values)


def test_files_overlay_and_cutouts(expl, tmp_path):
    expl.save(tmp_path, top_k=3)
    data = json.loads((tmp_path / "explanation.json").read_text())
    assert set(data["timings"]) >= {"concepts", "evaluations", "fit", "values"}
    assert data["ranking"][0][0] == int(np.argmax(expl.values[0]))
    overlay = cv2.imread(str(tmp_path / "overlay.png"))
    assert overlay.shape[0] == 32 * OVERLAY_SCALE and overlay.shape[1] > 32 * OVERLAY_SCALE  # image + legend
    assert (tmp_path / "overlay_target1.png").is_file()
    # The best concept is tinted red: its region differs from the plain upscaled crop.
    plain = cv2.resize(cv2.cvtColor(expl.crop, cv2.COLOR_RGB2BGR), (64, 64), interpolation=cv2.INTER_NEAREST)
    best = cv2.resize(expl.masks[expl.top(1)[0]].astype(np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST) > 0
    assert np.abs(overlay[:, :64].astype(int) - plain.astype(int))[best].mean() > 10
    for rank in (1, 2, 3):
        cut = cv2.imread(str(tmp_path / f"concept_{rank}.png"), cv2.IMREAD_UNCHANGED)
        mask = expl.masks[expl.top(3)[rank - 1]]
        ys, xs = np.nonzero(mask)
        assert cut.shape == (np.ptp(ys) + 1, np.ptp(xs) + 1, 4)
        assert (cut[:, :, 3] == 255).sum() == mask.sum()
    assert not (tmp_path / "concept_4.png").exists()


def test_single_target_and_zero_concepts(tmp_path):
    clf = FakeClassifier(seed=1)
    crop = random_image(seed=3)
    one = explain(crop, clf, grid_masks(rows=1, cols=2), method="loo")
    one.save(tmp_path / "one")
    back = Explanation.load(tmp_path / "one")
    assert back.values.shape == (2,) and back.stderr is None and back.target == one.target
    none = explain(crop, clf, np.zeros((0, 32, 32), bool), method="eac")
    none.save(tmp_path / "none")
    back = Explanation.load(tmp_path / "none")
    assert back.values.shape == (0,) and back.masks.shape == (0, 32, 32)
    assert (tmp_path / "none" / "overlay.png").is_file()


def test_load_errors(tmp_path):
    with pytest.raises(ExplainError, match="explanation.json"):
        Explanation.load(tmp_path)
    (tmp_path / "explanation.json").write_text("{not json")
    with pytest.raises(ExplainError, match="readable"):
        Explanation.load(tmp_path)


def test_bad_value_type_and_shape():
    with pytest.raises(ExplainError, match="value_type"):
        Explanation(np.zeros(2), np.zeros((2, 4, 4), bool), [0], [0.5], "eac", "exact")
    with pytest.raises(ExplainError, match="concepts"):
        Explanation(np.zeros(3), np.zeros((2, 4, 4), bool), [0], [0.5], "eac", "shapley")
