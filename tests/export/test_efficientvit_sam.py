"""EfficientViT-SAM: export (tiny and real L0 architectures, random weights), the runtime on its folder,
agreement with the efficientsam package's own automatic mask generator, checkpoints, loading without torchvision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientsam")
skimage_data = pytest.importorskip("skimage.data")

from eac.bench import models as bench_models
from eac.engine.cli import main
from eac.engine.images import apply_frame, resize_crop_frame
from eac.engine.sam import SamConceptGenerator
from eac.export import efficientvit_sam as evit
from eac.export.errors import CheckpointError
from eac.export.sam import export_sam_model
from eac.export.spec import SAM_DECODER, SAM_ENCODER

from tests.sam_fixtures import regionise_decoder_

REPO = Path(__file__).resolve().parents[2]
#: A tiny EfficientViT-SAM: the L-model layout (512 input, neck on stages 4/3/2), narrow and shallow.
TINY = evit.EfficientVitSamArchitecture(image_size=512, width_list=(8, 8, 16, 16, 32), depth_list=(1, 1, 1, 1, 1),
                                        neck_stages=("stage4", "stage3", "stage2"), neck_depth=1, neck_expand=1,
                                        neck_width=16)
PARITY_POINTS = 8
KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
MIN_MEAN_BEST_IOU = 0.95


def best_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return (inter / np.maximum(union, 1.0)).max(axis=1)


@pytest.fixture(scope="module")
def tiny_model():
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = evit.build_efficientvit_sam(TINY)
    finally:
        torch.random.set_rng_state(state)
    regionise_decoder_(model)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_folder(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("evit") / "tiny"
    export_sam_model(tiny_model, out, "efficientvit_tiny")
    return out


def test_tiny_export_manifest_says_input_size_and_prompt_frame(tiny_folder):
    manifest = json.loads((tiny_folder / "manifest.json").read_text())
    enc, dec = manifest["encoder"], manifest["decoder"]
    assert enc["input_size"] == 512 and dec["prompt_frame_size"] == 1024
    np.testing.assert_allclose(enc["pixel_mean"], evit.PIXEL_MEAN)
    np.testing.assert_allclose(enc["pixel_std"], evit.PIXEL_STD)
    assert manifest["architecture"]["family"] == "efficientvit_sam"
    val = manifest["validation"]
    assert val["encoder"]["max_abs_diff"]["image_embeddings"] <= SAM_ENCODER.tolerance["image_embeddings"]
    for name, diff in val["decoder"]["max_abs_diff"].items():
        assert diff <= SAM_DECODER.tolerance[name]


def test_engine_agrees_with_the_packages_own_generator(tiny_model, tiny_folder):
    """Keep-every-candidate masks of eac's runtime vs efficientsam's EfficientViTSamAutomaticMaskGenerator."""
    _, package = bench_models.import_efficientvit_sam_reference()
    reference = package.EfficientViTSamAutomaticMaskGenerator(
        bench_models.efficientvit_reference_model(tiny_model), points_per_side=PARITY_POINTS, **KEEP_ALL)
    photo = skimage_data.chelsea()
    frame = resize_crop_frame(photo.shape[:2], 256, 224)
    crop = apply_frame(photo, frame)
    ref_annotations = reference.generate(crop)
    ref = np.stack([a["segmentation"] for a in ref_annotations if a["area"] > 0])
    concepts = SamConceptGenerator.from_folder(tiny_folder, points_per_side=PARITY_POINTS, **KEEP_ALL)(crop, frame)
    areas = ref.reshape(len(ref), -1).mean(axis=1)
    assert len(ref) >= 100 and areas.min() < 0.5 < areas.max()  # varied masks: the comparison means something
    assert best_iou(concepts.masks, ref).mean() >= MIN_MEAN_BEST_IOU
    assert best_iou(ref, concepts.masks).mean() >= MIN_MEAN_BEST_IOU
    assert abs(len(concepts) - len(ref)) <= 0.02 * len(ref)
    ref_scores = np.sort([a["predicted_iou"] for a in ref_annotations if a["area"] > 0])[::-1]
    n = min(len(ref_scores), len(concepts))
    np.testing.assert_allclose(concepts.scores[:n], ref_scores[:n], atol=1e-3)


def test_rebuilt_encoder_head_is_the_packages_model():
    """Same parameter names and the same function as efficientsam's own efficientvit_sam_l0 builder."""
    zoo, _ = bench_models.import_efficientvit_sam_reference()
    torch.manual_seed(1)
    theirs = zoo.create_efficientvit_sam_model("efficientvit-sam-l0", pretrained=False).eval()
    ours = evit.build_efficientvit_sam("efficientvit_l0")
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    norm_types = (torch.nn.LayerNorm, torch.nn.BatchNorm2d, torch.nn.GroupNorm)
    eps = [m.eps for m in ours.modules() if isinstance(m, norm_types)]
    assert eps and set(eps) == {evit.NORM_EPS} == {m.eps for m in theirs.modules() if isinstance(m, norm_types)}
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        assert torch.equal(ours.image_encoder(x), theirs.image_encoder(x))


def test_cli_exports_a_checkpoint_and_refuses_the_wrong_type(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(evit.EFFICIENTVIT_ARCHITECTURES, "efficientvit_l0", TINY)
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), ckpt)
    out = tmp_path / "out"
    assert main(["export", "sam", "--model-type", "efficientvit_l0", "--checkpoint", str(ckpt), "--out",
                 str(out), "--skip-validation"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_type"] == "efficientvit_l0"
    assert "official_url" not in manifest["source"]  # a --checkpoint file is not the official release
    assert len(manifest["source"]["checkpoint_sha256"]) == 64
    capsys.readouterr()
    rc = main(["export", "sam", "--model-type", "efficientvit_l1", "--checkpoint", str(ckpt), "--out",
               str(tmp_path / "wrong")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "not an efficientvit_l1 checkpoint" in err
    assert "looks like efficientvit_l0" in err  # another size: which one (it gave no guess)
    rc = main(["export", "sam", "--model-type", "vit_b", "--checkpoint", str(ckpt), "--out", str(tmp_path / "vit")])
    err = capsys.readouterr().err.strip()  # an EfficientViT file as a SAM ViT (it said "not a SAM checkpoint")
    assert rc != 0 and len(err.splitlines()) == 1
    assert "an EfficientViT-SAM checkpoint (looks like efficientvit_l0)" in err


def test_download_offline_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("EAC_CACHE", str(tmp_path))

    def offline(url, timeout):
        raise urllib.error.URLError("network unreachable")

    with pytest.raises(CheckpointError) as info:
        evit.ensure_efficientvit_checkpoint("efficientvit_l0", opener=offline)
    message = str(info.value)
    assert "https://huggingface.co/mit-han-lab/efficientvit-sam/resolve/main/efficientvit_sam_l0.pt" in message
    assert str(tmp_path / "efficientvit_sam_l0.pt") in message and "\n" not in message


def test_checkpoint_table_cites_the_official_files():
    types = set(evit.EFFICIENTVIT_SAM_TYPES)
    assert set(evit.EFFICIENTVIT_CHECKPOINTS) == types == set(evit.EFFICIENTVIT_ARCHITECTURES)
    for model_type, entry in evit.EFFICIENTVIT_CHECKPOINTS.items():
        assert entry.url.endswith(entry.filename) and model_type.split("_")[1] in entry.filename
        assert entry.orin_ms > 0 and entry.approx_bytes > 100_000_000


def test_loader_without_torchvision_leaves_the_package_importable_later():
    """The loader never needs torchvision, and a later real import of the package still runs its __init__."""
    code = (
        "import sys, importlib.util\n"
        "assert importlib.util.find_spec('torchvision') is None\n"
        "from eac.export.efficientvit_sam import build_efficientvit_sam\n"
        "m = build_efficientvit_sam('efficientvit_l0')\n"
        "assert 'torchvision' not in sys.modules\n"
        "assert 'efficientsam.models.efficientvit' not in sys.modules\n"
        "from eac.bench.models import import_efficientvit_sam_reference\n"
        "zoo, sam = import_efficientvit_sam_reference()\n"
        "assert hasattr(sam, 'EfficientViTSamAutomaticMaskGenerator')\n"
        "print('ok')\n"
    )
    from eac.bench import tvshim

    if tvshim.torchvision_available():
        pytest.skip("torchvision is installed here")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                            check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.slow
def test_real_l0_architecture_exports_with_parity(tmp_path):
    """The real EfficientViT-SAM-L0 (random weights): export, validation, and an independent check."""
    torch.manual_seed(2)
    model = evit.build_efficientvit_sam("efficientvit_l0")
    manifest = export_sam_model(model, tmp_path / "l0", "efficientvit_l0")
    assert manifest["encoder"]["input_size"] == 512 and manifest["decoder"]["prompt_frame_size"] == 1024
    import onnxruntime as ort

    encoder = ort.InferenceSession(str(tmp_path / "l0" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(5).standard_normal((1, 3, 512, 512)).astype(np.float32)
    got = encoder.run(None, {"image": image})[0]
    with torch.no_grad():
        ref = model.image_encoder(torch.from_numpy(image)).numpy()
    assert got.shape == (1, 256, 64, 64)
    assert np.abs(got - ref).max() <= SAM_ENCODER.tolerance["image_embeddings"]
