"""SamConceptGenerator (ONNX Runtime) against segment-anything's SamAutomaticMaskGenerator (PyTorch).

Both run the same tiny random-weight SAM (tests/sam_fixtures.py) on a real
photograph (``skimage.data.chelsea``). segment-anything runs through
``eac.bench.tvshim`` when torchvision is absent. Masks are compared in the same
frame by best-IoU matching in both directions.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
skimage_data = pytest.importorskip("skimage.data")

from eac.bench import tvshim

with tvshim.installed():  # segment-anything's generator imports torchvision
    segment_anything = pytest.importorskip("segment_anything")

from eac.engine import sam as sam_module
from eac.engine.concepts import Concepts, Frame
from eac.engine.errors import ConceptError, InputShapeError
from eac.engine.images import apply_frame, resize_crop_frame
from eac.engine.sam import SamConceptGenerator
from eac.export.sam import export_sam_model
from eac.kernels import masks as mk

from tests.sam_fixtures import build_tiny_sam

#: Grid of the parity runs: 8×8 prompts = 192 candidates (segment-anything needs
#: ~10 s for them on 2 cores: it upsamples every candidate to 1024×1024).
PARITY_POINTS = 8
KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
#: Thresholds that keep part of the tiny model's candidates (its predicted IoUs lie in about
#: [-0.1, 0.3], its stability scores in [0, 0.7]). Its masks are scattered over the whole crop,
#: so every box is the full frame: NMS is checked separately (it keeps exactly one).
SOME = {"pred_iou_thresh": 0.2, "stability_score_thresh": 0.5, "box_nms_thresh": 1.0}
MIN_MEAN_BEST_IOU = 0.95


def best_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each mask of a (N×H×W), its best IoU with a mask of b (M×H×W)."""
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return (inter / np.maximum(union, 1.0)).max(axis=1)


def nonempty(masks: np.ndarray) -> np.ndarray:
    return masks[masks.reshape(len(masks), -1).any(axis=1)]


@pytest.fixture(scope="module")
def tiny_sam():
    return build_tiny_sam(seed=0)


@pytest.fixture(scope="module")
def folder(tiny_sam, tmp_path_factory):
    out = tmp_path_factory.mktemp("sam") / "tiny"
    export_sam_model(tiny_sam, out, "tiny", validate=False)  # validation is covered by test_export_sam.py
    return out


@pytest.fixture(scope="module")
def photo():
    return skimage_data.chelsea()  # 300×451 RGB


@pytest.fixture(scope="module")
def crop_and_frame(photo):
    frame = resize_crop_frame(photo.shape[:2], 256, 224)
    return apply_frame(photo, frame), frame


@pytest.fixture(scope="module")
def reference_keep_all(tiny_sam, crop_and_frame):
    """segment-anything's generator on the crop, every candidate kept."""
    crop, _ = crop_and_frame
    generator = segment_anything.SamAutomaticMaskGenerator(tiny_sam, points_per_side=PARITY_POINTS, **KEEP_ALL)
    return generator.generate(crop)


def test_keep_all_parity_in_crop_frame(folder, crop_and_frame, reference_keep_all):
    crop, frame = crop_and_frame
    generator = SamConceptGenerator.from_folder(folder, points_per_side=PARITY_POINTS, **KEEP_ALL)
    concepts = generator(crop, frame)
    ref = nonempty(np.stack([a["segmentation"] for a in reference_keep_all]))
    assert concepts.masks.shape[1:] == (224, 224) and concepts.frame == frame
    assert concepts.info["candidates"] == 3 * PARITY_POINTS**2
    # the comparison means something: many masks of varied size
    areas = ref.reshape(len(ref), -1).mean(axis=1)
    assert len(ref) >= 100 and areas.min() < 0.3 and areas.max() > 0.7
    ours_to_ref = best_iou(concepts.masks, ref)
    ref_to_ours = best_iou(ref, concepts.masks)
    assert ours_to_ref.mean() >= MIN_MEAN_BEST_IOU and ref_to_ours.mean() >= MIN_MEAN_BEST_IOU
    assert abs(len(concepts) - len(ref)) <= 0.02 * len(ref)
    # scores: the predicted IoUs of the kept masks, in descending order
    assert np.all(np.diff(concepts.scores) <= 0)
    ref_scores = np.sort([a["predicted_iou"] for a in reference_keep_all if a["area"] > 0])[::-1]
    n = min(len(ref_scores), len(concepts))
    np.testing.assert_allclose(concepts.scores[:n], ref_scores[:n], atol=1e-3)


def reference_filtered(annotations: list[dict], pred_iou: float, stability: float, nms: float) -> np.ndarray:
    """What segment-anything keeps with these thresholds, derived from its keep-all output.

    Its filters act per candidate and its NMS on the survivors' boxes with the
    predicted IoU as score; applying them to the keep-all annotations gives the
    same set without running the model again.
    """
    kept = [a for a in annotations if a["predicted_iou"] > pred_iou and a["stability_score"] >= stability]
    if not kept:
        return np.zeros((0, *annotations[0]["segmentation"].shape), bool)
    xywh = torch.tensor([a["bbox"] for a in kept], dtype=torch.float32)
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    scores = torch.tensor([a["predicted_iou"] for a in kept])
    keep = tvshim.batched_nms(boxes, scores, torch.zeros(len(kept)), nms).numpy()
    return np.stack([kept[i]["segmentation"] for i in keep])


def test_thresholded_parity(folder, crop_and_frame, reference_keep_all):
    crop, frame = crop_and_frame
    ref = reference_filtered(reference_keep_all, SOME["pred_iou_thresh"], SOME["stability_score_thresh"],
                             SOME["box_nms_thresh"])
    concepts = SamConceptGenerator.from_folder(folder, points_per_side=PARITY_POINTS, **SOME)(crop, frame)
    assert 3 <= len(ref) < 0.5 * len(reference_keep_all)  # the thresholds really filter
    assert abs(len(concepts) - len(ref)) <= max(1, 0.1 * len(ref))
    assert best_iou(concepts.masks, ref).mean() >= MIN_MEAN_BEST_IOU
    assert best_iou(ref, concepts.masks).mean() >= MIN_MEAN_BEST_IOU
    assert np.all(concepts.scores > SOME["pred_iou_thresh"])
    assert np.all(np.asarray(concepts.info["stability_scores"]) >= SOME["stability_score_thresh"])
    # NMS at 0.7 over full-frame boxes: one survivor, the best-scored candidate, on both sides
    nms = {**SOME, "box_nms_thresh": 0.7}
    ref_one = reference_filtered(reference_keep_all, nms["pred_iou_thresh"], nms["stability_score_thresh"], 0.7)
    one = SamConceptGenerator.from_folder(folder, points_per_side=PARITY_POINTS, **nms)(crop, frame)
    assert len(ref_one) == len(one) == 1
    assert best_iou(one.masks, ref_one)[0] >= MIN_MEAN_BEST_IOU


def test_identity_frame_on_non_square_photo(folder, tiny_sam, photo):
    """generate() on the whole 300×451 photo: padding and the non-square mapping."""
    points = 4
    ref_gen = segment_anything.SamAutomaticMaskGenerator(tiny_sam, points_per_side=points, **KEEP_ALL)
    ref = nonempty(np.stack([a["segmentation"] for a in ref_gen.generate(photo)]))
    concepts = SamConceptGenerator.from_folder(folder, points_per_side=points, **KEEP_ALL).generate(photo)
    assert concepts.masks.shape[1:] == photo.shape[:2]
    assert concepts.frame == Frame.identity(photo.shape[:2])
    assert best_iou(concepts.masks, ref).mean() >= MIN_MEAN_BEST_IOU
    assert best_iou(ref, concepts.masks).mean() >= MIN_MEAN_BEST_IOU


def test_default_thresholds_give_a_valid_empty_result(folder, crop_and_frame, tmp_path):
    crop, frame = crop_and_frame
    generator = SamConceptGenerator.from_folder(folder, points_per_side=4)  # reference defaults otherwise
    assert generator.settings.pred_iou_thresh == 0.88 and generator.settings.stability_score_thresh == 0.95
    concepts = generator(crop, frame)
    assert isinstance(concepts, Concepts) and len(concepts) == 0
    assert concepts.masks.shape == (0, 224, 224) and concepts.masks.dtype == bool
    assert concepts.scores.shape == (0,)
    assert concepts.info["candidates"] == 48 and concepts.info["after_filters"] == 0
    assert concepts.info["provider"] == "CPUExecutionProvider"
    assert {"encoder", "decoder", "postprocess"} <= set(concepts.timings)
    assert concepts.timings["encoder"] > 0 and concepts.timings["decoder"] > 0
    concepts.save(str(tmp_path / "empty.npz"))
    again = Concepts.load(str(tmp_path / "empty.npz"))
    assert len(again) == 0 and again.frame == frame
    assert len(concepts.in_original()) == 0


def test_batching_does_not_change_results(folder, crop_and_frame):
    crop, frame = crop_and_frame
    small = SamConceptGenerator.from_folder(folder, points_per_side=4, points_per_batch=5, **KEEP_ALL)(crop, frame)
    large = SamConceptGenerator.from_folder(folder, points_per_side=4, points_per_batch=256, **KEEP_ALL)(crop, frame)
    assert len(small) == len(large) > 0
    np.testing.assert_array_equal(small.masks, large.masks)
    np.testing.assert_allclose(small.scores, large.scores, atol=1e-5)
    # Prompts per decoder call (auto on the CPU: a few, with the image context precomputed) change nothing either.
    auto = SamConceptGenerator.from_folder(folder, points_per_side=4, **KEEP_ALL)
    assert auto.decoder_batch == sam_module.CPU_DECODER_BATCH
    one_call = SamConceptGenerator.from_folder(folder, points_per_side=4, decoder_batch=64, **KEEP_ALL)(crop, frame)
    np.testing.assert_array_equal(one_call.masks, large.masks)
    with pytest.raises(ConceptError, match="decoder_batch"):
        SamConceptGenerator.from_folder(folder, decoder_batch=0)


def test_old_one_graph_folders_give_the_same_concepts(folder, tiny_sam, crop_and_frame, tmp_path):
    """A folder from before the image-context split (decoder.onnx on the embeddings, no prompt frame key)."""
    import json

    crop, frame = crop_and_frame
    old = tmp_path / "old"
    export_sam_model(tiny_sam, old, "tiny", validate=False, decoder_graph="batched")
    manifest = json.loads((old / "manifest.json").read_text())
    for key in ("graph", "prompt_frame_size"):
        manifest["decoder"].pop(key)
    (old / "manifest.json").write_text(json.dumps(manifest))
    new = SamConceptGenerator.from_folder(folder, points_per_side=4, **KEEP_ALL)(crop, frame)
    generator = SamConceptGenerator.from_folder(old, points_per_side=4, points_per_batch=8, **KEEP_ALL)
    assert generator.decoder_batch == 8  # one-graph folders recompute the image side per call: full batches
    before = generator(crop, frame)
    assert len(new) == len(before) > 0
    assert best_iou(new.masks, before.masks).mean() >= 0.999
    np.testing.assert_allclose(new.scores, before.scores, atol=1e-4)


def test_thread_safety(folder, crop_and_frame):
    crop, frame = crop_and_frame
    generator = SamConceptGenerator.from_folder(folder, points_per_side=4, **KEEP_ALL)
    expected = generator(crop, frame)
    results: list = [None] * 3
    errors: list = []

    def work(i: int) -> None:
        try:
            results[i] = generator(crop, frame)
        except Exception as exc:  # any failure in a thread is reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in results:
        np.testing.assert_array_equal(got.masks, expected.masks)
        np.testing.assert_array_equal(got.scores, expected.scores)


def test_min_mask_region_area_cleans_masks(folder, crop_and_frame):
    import cv2

    crop, frame = crop_and_frame
    min_area = 150
    raw = SamConceptGenerator.from_folder(folder, points_per_side=4, **KEEP_ALL)(crop, frame)
    clean = SamConceptGenerator.from_folder(folder, points_per_side=4, min_mask_region_area=min_area,
                                            **KEEP_ALL)(crop, frame)
    assert 0 < len(clean) <= len(raw)
    assert any(not np.array_equal(a, b) for a, b in zip(raw.masks, clean.masks, strict=True))
    for mask in clean.masks:
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        sizes = stats[1:, cv2.CC_STAT_AREA]
        assert count == 2 or sizes.min() >= min_area  # one component, or none small
        count, _, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=8)
        assert count == 1 or stats[1:, cv2.CC_STAT_AREA].min() >= min_area  # no small holes
    assert np.all(np.diff(clean.scores) <= 0)


def test_bad_inputs_and_settings(folder, crop_and_frame):
    crop, frame = crop_and_frame
    generator = SamConceptGenerator.from_folder(folder, points_per_side=2)
    with pytest.raises(InputShapeError, match="uint8"):
        generator(crop.astype(np.float32), frame)
    with pytest.raises(InputShapeError, match="frame"):
        generator(crop[:100], frame)
    with pytest.raises(InputShapeError):
        generator.generate(crop[..., 0])
    with pytest.raises(ConceptError, match="crop_n_layers"):
        SamConceptGenerator.from_folder(folder, crop_n_layers=-1)
    with pytest.raises(ConceptError, match="points_per_side"):
        SamConceptGenerator.from_folder(folder, points_per_side=0)


def test_prompt_grid_matches_reference_points(folder, crop_and_frame, reference_keep_all):
    """The prompts are segment-anything's grid points, in the crop frame."""
    crop, frame = crop_and_frame
    concepts = SamConceptGenerator.from_folder(folder, points_per_side=PARITY_POINTS, **KEEP_ALL)(crop, frame)
    grid = mk.point_grid(PARITY_POINTS) * np.array([224, 224])
    ours = {tuple(np.round(p, 3)) for p in concepts.info["point_coords"]}
    theirs = {tuple(np.round(a["point_coords"][0], 3)) for a in reference_keep_all}
    assert ours <= {tuple(np.round(p, 3)) for p in grid}
    assert len(ours & theirs) >= 0.95 * len(theirs)


@pytest.mark.slow
def test_crop_layers_parity(folder, tiny_sam, crop_and_frame):
    """crop_n_layers=1: the image plus 2×2 overlapping crops, merged (segment-anything runs 5 encoders).

    The tiny model's masks are scattered over their whole crop, so inner-crop
    masks touch an inner crop edge and are dropped on both sides; with
    crop_nms_thresh=1 every full-image candidate survives the merge.
    """
    crop, frame = crop_and_frame
    settings = dict(points_per_side=4, crop_n_layers=1, crop_nms_thresh=1.0, **KEEP_ALL)
    ref_anns = segment_anything.SamAutomaticMaskGenerator(tiny_sam, **settings).generate(crop)
    ref_anns = [a for a in ref_anns if a["area"] > 0]
    ref = np.stack([a["segmentation"] for a in ref_anns])
    concepts = SamConceptGenerator.from_folder(folder, **settings)(crop, frame)
    assert len(concepts.info["crops"]) == 5
    ref_crops = {tuple(int(v) for v in a["crop_box"]) for a in ref_anns}
    ours_crops = {tuple(concepts.info["crops"][i]) for i in set(concepts.info["crop_index"])}
    # segment-anything reports crop boxes as x, y, w, h
    assert {(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in ours_crops} == ref_crops
    assert abs(len(concepts) - len(ref)) <= max(2, 0.05 * len(ref))
    assert best_iou(concepts.masks, ref).mean() >= MIN_MEAN_BEST_IOU
    assert best_iou(ref, concepts.masks).mean() >= MIN_MEAN_BEST_IOU


def test_malformed_manifest_is_a_one_line_error(folder, tmp_path):
    import json
    import shutil

    from eac.engine.errors import ModelFolderError

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["decoder"]["low_res_size"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match=r"low_res_size.*re-run `eac export sam`"):
        SamConceptGenerator.from_folder(broken)
