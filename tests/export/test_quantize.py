"""int8 copies of classifier folders (ONNX Runtime static quantisation) and how close they stay to fp32.

The shipped demo classifier (trained on the synthetic scenes) is quantised, calibrated on masked
scenes as eac's evaluations look; its probabilities and its explanations are compared with the
fp32 folder's on other scenes. The same checks fail for a badly calibrated copy (black images
only), so they measure the calibration, not just that a file was written.
"""

from __future__ import annotations

import numpy as np
import pytest
from eac.engine.classifier import Classifier
from eac.engine.explainer import explain
from eac.engine.manifest import read_manifest
from eac.engine.metrics import spearman
from eac.engine.scenes import make_scene, scene_concepts
from eac.export.errors import ExportError
from eac.export.quantize import PRECISION, masked_calibration, quantize_classifier

#: Masked images per calibration scene / per test scene.
PER_SCENE = 16
CALIBRATION_SCENES, TEST_SCENES = 3, 3
#: A well calibrated int8 copy: probabilities within this of fp32's on unseen masked scenes, and
#: explanations ranked alike (measured: 0.010 and ≥ 0.976; calibrated on black images only: 0.67 and 0.24).
MAX_PROBABILITY_DIFFERENCE = 0.03
MIN_SPEARMAN = 0.95


def _masked(classifier, scenes, seed):
    return np.concatenate([masked_calibration(classifier, s.image, scene_concepts(s).masks, PER_SCENE, seed + i)
                           for i, s in enumerate(scenes)])


def _probabilities(classifier, x):
    logits = classifier.run(x, features=False).logits
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _agreement(fp32, int8, test, scenes):
    dp = float(np.abs(_probabilities(fp32, test) - _probabilities(int8, test)).max())
    rhos, firsts = [], []
    for s in scenes:
        masks = scene_concepts(s).masks
        a, b = explain(s.image, fp32, masks, seed=0), explain(s.image, int8, masks, seed=0)
        rhos.append(spearman(a.values, b.values))
        firsts.append(int(np.argmax(b.values)))
    return dp, min(rhos), firsts


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(5)
    made = [make_scene(rng, 128) for _ in range(CALIBRATION_SCENES + TEST_SCENES)]
    return made[:CALIBRATION_SCENES], made[CALIBRATION_SCENES:]


def test_int8_copy_calibrated_on_masked_images_agrees_with_fp32(demo_classifier_folder, scenes, tmp_path):
    fp32 = Classifier.from_folder(demo_classifier_folder)
    calibration_scenes, test_scenes = scenes
    test = _masked(fp32, test_scenes, 100)
    good = tmp_path / "int8"
    manifest = quantize_classifier(demo_classifier_folder, good, _masked(fp32, calibration_scenes, 0),
                                   calibration_source="masked scenes")
    assert manifest["precision"] == PRECISION == read_manifest(good)["precision"]
    assert manifest["validation"]["int8"]["calibration_images"] == PER_SCENE * CALIBRATION_SCENES
    int8 = Classifier.from_folder(good)  # checksums of the new files verified on load
    dp, rho, firsts = _agreement(fp32, int8, test, test_scenes)
    assert dp <= MAX_PROBABILITY_DIFFERENCE
    assert rho >= MIN_SPEARMAN
    assert firsts == [0] * TEST_SCENES  # the red shape's concept still first

    bad = tmp_path / "int8-black"
    black = np.repeat(fp32.normalize(np.zeros((1, 128, 128, 3), np.uint8)), 8, axis=0)
    quantize_classifier(demo_classifier_folder, bad, black)
    dp_bad, rho_bad, _ = _agreement(fp32, Classifier.from_folder(bad), test, test_scenes)
    assert dp_bad > MAX_PROBABILITY_DIFFERENCE and rho_bad < MIN_SPEARMAN  # the thresholds catch a bad copy


def test_quantize_refuses_bad_calibration_and_int8_input(demo_classifier_folder, tmp_path):
    with pytest.raises(ExportError, match="calibration images must be"):
        quantize_classifier(demo_classifier_folder, tmp_path / "a", np.zeros((4, 3, 64, 64), np.float32))
    with pytest.raises(ExportError, match="calibration images must be"):
        quantize_classifier(demo_classifier_folder, tmp_path / "b", np.zeros((0, 3, 128, 128), np.float32))
    quantize_classifier(demo_classifier_folder, tmp_path / "c", np.zeros((2, 3, 128, 128), np.float32))
    with pytest.raises(ExportError, match="already int8"):
        quantize_classifier(tmp_path / "c", tmp_path / "d", np.zeros((2, 3, 128, 128), np.float32))
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


def test_eac_export_int8_calibrates_checks_and_prints_the_agreement(demo_classifier_folder, scenes, tmp_path,
                                                                      capsys):
    import cv2
    from eac.engine.cli import main

    paths = []
    for i, scene in enumerate(scenes[0][:2]):
        paths.append(tmp_path / f"scene{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "int8"
    assert main(["export", "int8", *map(str, paths), "--classifier", str(demo_classifier_folder), "--out", str(out),
                 "--per-image", "8", "--n-segments", "12"]) == 0
    printed = capsys.readouterr().out
    assert "int8 vs fp32 explanations on 1 held-out images" in printed and "Spearman" in printed
    check = read_manifest(out)["validation"]["int8"]
    assert check["calibration_images"] == 8  # one image calibrates, the other is held out
    agreement = check["agreement"]
    assert agreement["held_out"] is True and agreement["images"] == 1
    assert -1 <= agreement["min_spearman"] <= 1 and 0 <= agreement["mean_top3"] <= 1
