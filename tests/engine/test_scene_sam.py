"""The SAM trained on generated scenes and shipped with eac (``eac/engine/data/demo_sam``).

With the reference's default filters (32×32 grid, predicted IoU 0.88, stability 0.95,
box NMS 0.7) on held-out generated scenes (seed streams training never used):

* concepts are objects: most objects recovered by a concept of IoU ≥ 0.85, few
  concepts near-duplicates of another. On the 24 scenes below the shipped checkpoint
  (with its logit shift) recovers 89.3 % (67 of 75 objects) with no near-duplicate (0 of
  94 concepts); on 96 scenes 93.3 % and 3.6 % (`python -m eac.bench.study_prompts`): the
  issue's targets (recall ≥ 90 %, near-duplicates ≤ 5 %) hold on 96 scenes; these 24 are
  a harder draw for recall (before the shift: 93.3 % and 2.1 % here, 96.3 % and 6.1 % on
  96). The thresholds hold that level with a margin, and each is one a weaker generator
  fails;
* the engine gives segment-anything's masks: ``SamAutomaticMaskGenerator`` on the
  checkpoint the folder was exported from keeps the same number of masks (±1) with
  mean best IoU ≥ 0.97 both ways, and the same predicted IoU and stability score per
  matched mask (tolerances below);
* the folder recommends the coarse-to-fine prompt schedule (its manifest's ``recommended_settings``), which
  ``from_folder`` applies unless told otherwise: on the 24 scenes it decodes 12 % of the prompts and keeps the
  same objects (89.3 %) with no near-duplicate; the tests of the reference's behaviour ask for ``"grid"``;
* the demo's red shape is the top concept (with the default, coarse-to-fine, as ``eac demo`` runs it);
* a manifest naming another SAM size, and a checkpoint of another architecture, fail
  in one line.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from eac.bench import scene_metrics as sm
from eac.engine.cli import main
from eac.engine.demo import demo_classifier_path, demo_sam_path
from eac.engine.errors import ModelFolderError
from eac.engine.object_scenes import held_out_scenes
from eac.engine.sam import SamConceptGenerator

#: Held-out object scenes of the recall test (slow: about 3 CPU seconds per scene), and of the parity test
#: (segment-anything's generator takes about 6 CPU seconds per scene: it upsamples all 3072 candidates).
RECALL_SCENES = 24
PARITY_SCENES = 3
#: What the shipped SAM reaches on these scenes (89.3 % recall, no near-duplicate), less a margin
#: of about 4 objects / 4 concepts (ONNX Runtime builds may differ at the filters' edges). The
#: near-duplicate threshold is the issue's target (5 %); the recall threshold is 4 objects below the
#: measured 67 of 75 (on 96 scenes the study measures 93.3 %; a 4×4 grid reaches 60 % here).
MIN_RECALL = 0.84
MAX_DUPLICATE_FRACTION = 0.05
MIN_MEAN_BEST_IOU = 0.97
#: Measured on the 3 parity scenes: 7/7, 3/3 and 3/3 masks kept, mean best IoU 1.000 both ways. Before the
#: logit shift: 8/8, 3/3, 3/3, all 14 from the same grid point on both sides, largest differences 3.6e-7 in
#: predicted IoU and 0 in stability score.
#: Predicted IoU of matched masks: the same decoder (ONNX Runtime vs PyTorch) on the same prompt.
IOU_PREDICTION_ATOL = 1e-4
#: Stability score of matched masks: the engine counts pixels of the 128×128 low-resolution logits,
#: segment-anything of the logits upsampled to the 128×128 image — the same grid, so only logits within
#: float rounding of ±1 can count differently (one pixel of a 300-pixel mask moves the score by ~0.003).
#: (The first scene SAM's 64×64 logits gave differences up to 0.014 at the edges, under a bound of 0.03.)
STABILITY_ATOL = 0.005
#: A concept source that is clearly worse must fail the recall threshold: a 4×4 grid of prompts (64 %).
WEAK_POINTS_PER_SIDE = 4
#: ... and one without box NMS must fail the near-duplicate threshold (a box IoU above 1 never suppresses:
#: MEASURED on the first 6 scenes).
WEAK_BOX_NMS = 1.0
WEAK_NMS_SCENES = 6


@pytest.fixture(scope="module")
def scenes():
    return held_out_scenes(RECALL_SCENES)


#: The reference's prompts: every point of the 32×32 grid (the folder's default decodes coarse-to-fine).
GRID = {"prompt_schedule": "grid"}


@pytest.fixture(scope="module")
def generator():
    return SamConceptGenerator.from_folder(demo_sam_path(), **GRID)


@pytest.fixture(scope="module")
def parity_concepts(scenes, generator):
    return [generator.generate(image) for image, _ in scenes[:PARITY_SCENES]]


def test_shipped_folder_is_small_and_named():
    folder = demo_sam_path()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model_type"] == "scene" and manifest["encoder"]["input_size"] == 128
    assert manifest["architecture"]["patch_size"] == 4
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 10 * 2**20


@pytest.mark.slow
def test_concepts_are_objects(scenes, generator, parity_concepts):
    concepts = parity_concepts + [generator.generate(image) for image, _ in scenes[PARITY_SCENES:]]
    scores = [sm.score_scene(c.masks, objects) for c, (_, objects) in zip(concepts, scenes)]
    summary = sm.summarise(scores)
    assert summary["objects"] >= 3 * RECALL_SCENES
    assert summary["recall"] >= MIN_RECALL, summary
    assert summary["duplicate_fraction"] <= MAX_DUPLICATE_FRACTION, summary
    # the threshold means something: a 4×4 grid of prompts misses objects
    weak = SamConceptGenerator.from_folder(demo_sam_path(), points_per_side=WEAK_POINTS_PER_SIDE, **GRID)
    weak_scores = [sm.score_scene(weak.generate(image).masks, objects) for image, objects in scenes]
    assert sm.summarise(weak_scores)["recall"] < MIN_RECALL
    # ... and near-duplicates mean something: a weaker box NMS keeps more of them
    loose = SamConceptGenerator.from_folder(demo_sam_path(), box_nms_thresh=WEAK_BOX_NMS, **GRID)
    loose_scores = [sm.score_scene(loose.generate(image).masks, objects) for image, objects in scenes[:WEAK_NMS_SCENES]]
    assert sm.summarise(loose_scores)["duplicate_fraction"] > MAX_DUPLICATE_FRACTION
    # The folder's default, coarse-to-fine, keeps every object the grid keeps (the rule: recall within
    # 1 point of the 32×32 grid; one object is 1.3 points here) with at most the grid's near-duplicates.
    default = SamConceptGenerator.from_folder(demo_sam_path())
    assert default.settings.prompt_schedule == "coarse-to-fine"
    sparse = [default.generate(image) for image, _ in scenes]
    fine = sm.summarise([sm.score_scene(c.masks, objects) for c, (_, objects) in zip(sparse, scenes)])
    assert fine["recall"] >= summary["recall"] - 0.01, (fine, summary)
    assert fine["duplicate_fraction"] <= summary["duplicate_fraction"], (fine, summary)
    assert np.mean([c.info["prompts"] for c in sparse]) < 0.25 * 32 * 32


def _matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each mask of a, the index of its best match in b and that IoU."""
    iou = sm.iou_matrix(a, b)
    return iou.argmax(axis=1), iou.max(axis=1)


@pytest.mark.slow  # about 100 CPU seconds: segment-anything upsamples all 3072 candidates of each scene
def test_same_masks_as_segment_anything_with_default_filters(scenes, parity_concepts):
    torch = pytest.importorskip("torch")
    from eac.bench import tvshim
    from eac.bench.scene_sam_bench import SCENE_SAM_CHECKPOINT
    from eac.export.sam_loader import load_sam

    with tvshim.installed():
        segment_anything = pytest.importorskip("segment_anything")
    reference = segment_anything.SamAutomaticMaskGenerator(load_sam("scene", SCENE_SAM_CHECKPOINT))
    both_ways, iou_diffs, stability_diffs = [], [], []
    for (image, _), ours in zip(scenes, parity_concepts):
        with torch.no_grad():
            records = reference.generate(image)
        theirs = np.stack([r["segmentation"] for r in records])
        assert abs(len(ours) - len(theirs)) <= 1
        assert len(ours) >= 2  # real masks kept by the default filters
        index, best = _matches(ours.masks, theirs)
        back = _matches(theirs, ours.masks)[1]
        both_ways.append((best.mean(), back.mean()))
        # Scores are compared for the same candidate: a matched mask decoded from the same grid point. Near
        # the 0.95 stability threshold two stability counts that differ in a pixel can keep different
        # candidates of one object (the first scene SAM's 64² logits did: IoU 0.985, grid points 5 px apart):
        # same mask, other prompt, other scores.
        points = np.asarray(ours.info["point_coords"])
        same_point = np.array([np.allclose(points[i], records[j]["point_coords"][0], atol=1e-3)
                               for i, j in enumerate(index)], bool)
        same = (best >= MIN_MEAN_BEST_IOU) & same_point
        iou_diffs += list(np.abs(ours.scores[same] - [records[j]["predicted_iou"] for j in index[same]]))
        stability = np.asarray(ours.info["stability_scores"])[same]
        stability_diffs += list(np.abs(stability - [records[j]["stability_score"] for j in index[same]]))
    both_ways = np.array(both_ways)
    assert both_ways.mean(axis=0).min() >= MIN_MEAN_BEST_IOU, both_ways
    assert len(iou_diffs) >= 2 * PARITY_SCENES
    assert max(iou_diffs) <= IOU_PREDICTION_ATOL
    assert max(stability_diffs) <= STABILITY_ATOL


def test_coarse_to_fine_decodes_fewer_prompts_and_keeps_the_objects(scenes, parity_concepts):
    generator = SamConceptGenerator.from_folder(demo_sam_path(), prompt_schedule="coarse-to-fine")
    subset = scenes[:PARITY_SCENES]
    sparse = [generator.generate(image) for image, _ in subset]
    assert all(c.info["prompts"] + c.info["prompts_skipped"] == 32 * 32 for c in sparse)
    assert np.mean([c.info["prompts"] for c in sparse]) < 0.5 * 32 * 32
    grid = sm.summarise([sm.score_scene(c.masks, o) for c, (_, o) in zip(parity_concepts, subset)])
    fine = sm.summarise([sm.score_scene(c.masks, o) for c, (_, o) in zip(sparse, subset)])
    assert fine["recall"] >= grid["recall"] - 1.0 / grid["objects"]  # at most one object lost on these scenes


@pytest.mark.slow
@pytest.mark.parametrize("method", ["eac", "cam", "secam"])
def test_demo_red_shape_is_the_top_concept(method):
    # cam/secam: the shipped demo classifier exports its feature map (the last conv block's output,
    # whose average is the features), so every method `eac demo --method` lists runs on it
    from eac.engine.classifier import Classifier
    from eac.engine.explainer import Explainer
    from eac.engine.scenes import make_scene

    classifier = Classifier.from_folder(demo_classifier_path())
    source = SamConceptGenerator.from_folder(demo_sam_path())
    tops = []
    for seed in range(20):
        scene = make_scene(np.random.default_rng(seed), 128)  # what `eac demo --seed SEED` explains
        explanation = Explainer(classifier, method=method, seed=seed).explain(scene.image, source)
        overlap = sm.iou_matrix(explanation.masks, scene.key_mask[None])[:, 0]
        top = int(explanation.ranking[0])
        tops.append(float(overlap[top]))
    # the #1 concept is the red shape (IoU ≥ 0.85 with it) on every seed
    assert min(tops) >= sm.RECALL_IOU, tops


def test_the_folder_recommends_coarse_to_fine_and_a_setting_given_wins(tmp_path):
    assert SamConceptGenerator.from_folder(demo_sam_path()).settings.prompt_schedule == "coarse-to-fine"
    assert SamConceptGenerator.from_folder(demo_sam_path(), **GRID).settings.prompt_schedule == "grid"
    folder = tmp_path / "sam"
    shutil.copytree(demo_sam_path(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["recommended_settings"]  # a folder without a recommendation: the reference grid
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert SamConceptGenerator.from_folder(folder).settings.prompt_schedule == "grid"
    manifest["recommended_settings"] = {"prompt_schedule": "coarse-to-fine", "points_per_sid": 16}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match=r"recommended_settings names unknown generator settings "
                                               r"\(points_per_sid\); re-run `eac export sam`"):
        SamConceptGenerator.from_folder(folder)
    manifest["recommended_settings"] = {"prompt_schedule": "every-other"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="recommended_settings: unknown prompt schedule 'every-other'"):
        SamConceptGenerator.from_folder(folder)


def test_a_manifest_naming_another_size_fails_in_one_line(tmp_path, capsys):
    folder = tmp_path / "sam"
    shutil.copytree(demo_sam_path(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["encoder"]["input_size"] = 1024
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match=r"takes 128×128 images but the manifest .* says input_size 1024"):
        SamConceptGenerator.from_folder(folder)
    image = tmp_path / "scene.png"
    import cv2

    cv2.imwrite(str(image), held_out_scenes(1)[0][0])
    code = main(["concepts", str(image), "--sam", str(folder), "--out", str(tmp_path / "c.npz")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "another SAM size" in err


def test_a_checkpoint_of_another_architecture_fails_in_one_line(tmp_path, capsys):
    pytest.importorskip("torch")
    from eac.bench.scene_sam_bench import SCENE_SAM_CHECKPOINT

    from tests.sam_fixtures import build_tiny_sam, save_checkpoint

    tiny = save_checkpoint(build_tiny_sam(seed=0), tmp_path / "tiny.pth")
    code = main(["export", "sam", "--model-type", "scene", "--checkpoint", str(tiny), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and "not a scene checkpoint" in err
    code = main(["export", "sam", "--model-type", "vit_b", "--checkpoint", str(SCENE_SAM_CHECKPOINT),
                 "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "not a vit_b checkpoint" in err and "looks like scene" in err


def test_an_int8_decoder_too_far_from_pytorch_says_it_is_the_quantisation(tmp_path, capsys):
    """On the trained SAM (mask logits in the hundreds) the int8 decoder misses the tolerance: the refusal names
    the quantisation and the two ways on (it read like an export bug); --skip-validation keeps it, measured."""
    pytest.importorskip("torch")
    from eac.bench.scene_sam_bench import SCENE_SAM_CHECKPOINT
    from eac.engine.manifest import read_manifest

    base = ["export", "sam", "--model-type", "scene", "--checkpoint", str(SCENE_SAM_CHECKPOINT),
            "--decoder-precision", "int8", "--out"]
    assert main([*base, str(tmp_path / "a")]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "the int8 decoder is too far from PyTorch" in err
    assert "--skip-validation" in err and not (tmp_path / "a").exists()
    assert main([*base, str(tmp_path / "b"), "--skip-validation"]) == 0
    check = read_manifest(tmp_path / "b", "sam")["validation"]["decoder_precision"]
    assert check["precision"] == "int8" and check["mask_iou_same_candidate"]["mean"] < 1.0


def test_demo_explains_sam_concepts_by_default(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "sam")]) == 0
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.strip().startswith("#1:"))
    assert "on the red shape" in first and "time: concepts" in out and "insertion AUC" in out
    result = json.loads((tmp_path / "sam" / "explanation.json").read_text())
    assert result["info"]["concept_source"] == "sam"
    assert main(["demo", "--out", str(tmp_path / "slic"), "--concepts", "superpixels"]) == 0
    slic = json.loads((tmp_path / "slic" / "explanation.json").read_text())
    assert slic["info"]["concept_source"] != "sam"
    capsys.readouterr()
    code = main(["demo", "--out", str(tmp_path / "x"), "--concepts", "superpixels", "--sam", str(demo_sam_path())])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--concepts superpixels" in err


#: A photo-sized frame for the post-processing memory test (1.08 megapixels), and the bound on its peak: the
#: low-res logits of the candidates that pass the filters wait for NMS (at most 3072 × 128² float32 = 192 MB
#: with the shipped SAM's 128×128 logits; 381 MB measured with the decoder's batch buffers), against 1616 MB
#: for the old path that kept full-frame masks (with the first scene SAM's 64×64 logits).
LARGE_HW = (900, 1200)
LARGE_PEAK_MB = 450


def test_post_processing_memory_does_not_grow_with_the_candidates_on_a_large_photo(generator):
    """Every filtered candidate was once kept as a full-frame mask until NMS (and upsampled as float32 logits a whole
    decoder batch at a time): this grid-schedule run peaked at 1616 MB of numpy allocations, and a 3000×2250 photo at
    10 GB of RSS; now only the low-res logits wait for NMS and masks are upsampled a few at a time (74 MB with the
    first scene SAM's 64×64 logits, 381 MB with the shipped SAM's 128×128). The
    masks are the same: the engine-vs-segment-anything parity tests above run the same code."""
    import tracemalloc

    import cv2
    from eac.engine.scenes import make_scene

    image = cv2.resize(make_scene(np.random.default_rng(3), 128).image, LARGE_HW[::-1], interpolation=cv2.INTER_NEAREST)
    tracemalloc.start()
    try:
        concepts = generator.generate(image)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert len(concepts) >= 3 and concepts.masks.shape[1:] == LARGE_HW
    assert peak < LARGE_PEAK_MB, f"post-processing peaked at {peak:.0f} MB"


def test_crop_layers_place_only_the_merged_masks_at_the_image_size():
    """With crop layers every crop's kept masks were placed in full-frame arrays before the merge between
    crops: this run peaked at 3.1× the bytes of its output masks (209 MB for 68 MB); now each crop's masks
    stay at the crop's size and only the merge's survivors are placed (1.6×). The masks, scores and crop
    indices were checked equal to the old code's on 1024² frames (crop_n_layers 1 and 2); the parity with
    segment-anything's crop layers is `test_sam_generator.py::test_crop_layers_parity`."""
    import tracemalloc

    import cv2
    from eac.engine.concepts import Frame

    scenes = [image for image, _ in held_out_scenes(4)]
    image = np.concatenate([np.concatenate(scenes[:2], 1), np.concatenate(scenes[2:], 1)], 0)
    image = cv2.resize(image, (640, 640), interpolation=cv2.INTER_NEAREST)
    generator = SamConceptGenerator.from_folder(  # every candidate kept: many masks to merge
        demo_sam_path(), prompt_schedule="grid", points_per_side=16, crop_n_layers=1, pred_iou_thresh=0.0,
        stability_score_thresh=0.0, crop_nms_thresh=0.9)
    tracemalloc.start()
    try:
        concepts = generator(image, Frame.identity(image.shape[:2]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(concepts) > 100 and len(set(concepts.info["crop_index"])) == 5
    assert peak < 2 * concepts.masks.nbytes, f"peak {peak / concepts.masks.nbytes:.2f}× the output masks"
    # each mask lies inside its crop box and holds its prompt point's crop
    for mask, index in zip(concepts.masks, concepts.info["crop_index"], strict=True):
        x0, y0, x1, y1 = concepts.info["crops"][index]
        outside = mask.copy()
        outside[y0:y1, x0:x1] = False
        assert not outside.any()
