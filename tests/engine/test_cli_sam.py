"""`eac concepts`, `eac explain --sam` and `eac demo --sam` through the command line, on a tiny SAM."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from eac.engine.cli import main
from eac.engine.concepts import Concepts
from eac.engine.scenes import make_scene

pytest.importorskip("torch")

#: Filters off (the tiny random-weight SAM's scores are low and its boxes all cover the frame, see
#: test_sam_generator.py) on a 2×2 grid: 4 prompts × 3 candidates.
SOME = ["--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--box-nms-thresh", "1.0",
        "--points-per-side", "2"]


@pytest.fixture(scope="module")
def sam_folder(tmp_path_factory):
    from eac.export.sam import export_sam_model

    from tests.sam_fixtures import build_tiny_sam

    out = tmp_path_factory.mktemp("cli_sam") / "tiny"
    export_sam_model(build_tiny_sam(seed=0), out, "tiny", validate=False)
    return out


@pytest.fixture()
def photo(tmp_path):
    scene = make_scene(np.random.default_rng(4), 160)  # 160 > the demo classifier's 128: a real crop
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    return path


def test_concepts_in_image_and_classifier_frames(sam_folder, photo, tmp_path, demo_classifier_folder, capsys):
    assert main(["concepts", str(photo), "--sam", str(sam_folder), "--out", str(tmp_path / "a.npz"), *SOME]) == 0
    whole = Concepts.load(tmp_path / "a.npz")
    assert whole.hw == (160, 160) and len(whole) > 0
    assert {"encoder", "decoder", "postprocess"} <= set(whole.timings)
    assert f"{len(whole)} concepts" in capsys.readouterr().out
    assert main(["concepts", str(photo), "--sam", str(sam_folder), "--out", str(tmp_path / "b.npz"),
                 "--classifier", str(demo_classifier_folder), *SOME]) == 0
    cropped = Concepts.load(tmp_path / "b.npz")
    assert cropped.hw == (128, 128)  # the classifier's crop frame
    assert cropped.frame.original_hw == (160, 160)
    assert cropped.in_original().shape[1:] == (160, 160)


def test_explain_with_sam_concepts(sam_folder, photo, tmp_path, demo_classifier_folder, capsys):
    code = main(["explain", str(photo), "--classifier", str(demo_classifier_folder), "--sam", str(sam_folder),
                 "--out", str(tmp_path / "e"), "--json", *SOME])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert not data["failures"] and len(data["results"]) == 1
    result = data["results"][0]
    assert result["num_concepts"] > 0 and result["timings"]["concepts"] > 0
    assert (tmp_path / "e" / "overlay.png").is_file()


def test_sam_errors_are_one_line(photo, tmp_path, demo_classifier_folder, capsys):
    code = main(["concepts", str(photo), "--sam", str(demo_classifier_folder), "--out", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert code != 0 and "'sam' model folder is needed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()
