"""`python -m eac.bench.train_sam`: the training command on a few steps, its batched decoder, its losses."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eac.bench import train_sam as ts
from eac.export.sam_loader import SCENE_SAM, build_sam_model, load_sam

#: A few steps of the real architecture: enough for the loss to fall from its random start.
STEPS = 24
LOG_EVERY = 8


def test_batched_decode_is_sams_mask_decoder():
    """decode() runs prompts of several images in one batch; it must equal SAM's own per-image calls."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = build_sam_model(SCENE_SAM).eval()
        images = torch.randn(2, 3, SCENE_SAM.image_size, SCENE_SAM.image_size)
        coords = [torch.rand(3, 2) * 128, torch.rand(2, 2) * 128]
    with torch.no_grad():
        emb = sam.image_encoder(images)
        low, iou = ts.decode(sam, emb, torch.tensor([0, 0, 0, 1, 1]), torch.cat(coords))
        ref_low, ref_iou = [], []
        for b, c in enumerate(coords):
            sparse, dense = sam.prompt_encoder(points=(c[:, None], torch.ones(len(c), 1)), boxes=None, masks=None)
            m, i = sam.mask_decoder(emb[b:b + 1], sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
            ref_low.append(m)
            ref_iou.append(i)
    assert low.shape == (5, 3, 64, 64)
    torch.testing.assert_close(low, torch.cat(ref_low), atol=1e-5, rtol=0)
    torch.testing.assert_close(iou, torch.cat(ref_iou), atol=1e-5, rtol=0)


def test_losses_pick_the_best_mask_and_regress_every_iou():
    target = torch.zeros(1, 8, 8, dtype=torch.bool)
    target[0, 2:6, 2:6] = True
    good = torch.where(target, 10.0, -10.0)
    logits = torch.stack([-good, good, torch.zeros_like(good)], dim=1)  # wrong, right, undecided
    iou_pred = torch.tensor([[0.0, 1.0, 0.0]])
    s = ts.TrainSettings()
    parts = ts.losses(logits, iou_pred, target, s, margin_w=s.margin_weight)
    assert float(parts["mask"]) < 1e-3  # the right mask is the best one: its loss alone counts
    assert float(parts["iou"]) < 1e-6  # the true IoUs are 0, 1, 0 — as predicted
    worse = ts.losses(logits, torch.tensor([[1.0, 0.0, 1.0]]), target, s, margin_w=s.margin_weight)
    assert float(worse["iou"]) == pytest.approx(1.0)
    # the margin term: a right but soft mask (|logit| < margin) costs more than a sharp one
    soft = ts.losses(logits / 10, iou_pred, target, s, margin_w=s.margin_weight)
    assert float(soft["mask"]) > float(parts["mask"]) + 0.1


def test_margin_ramps_in():
    s = ts.TrainSettings(steps=100, margin_start=0.3, margin_ramp=0.3, margin_weight=0.5)
    assert ts.margin_weight(10, s) == 0.0
    assert ts.margin_weight(45, s) == pytest.approx(0.25)
    assert ts.margin_weight(90, s) == 0.5


def test_training_command_runs_writes_its_files_and_the_loss_falls(tmp_path, capsys):
    out = tmp_path / "run"
    # the margin term off (it ramps in later in a real run and adds to the loss; tested above)
    rc = ts.main(["--out", str(out), "--steps", str(STEPS), "--workers", "1", "--threads", "1",
                  "--eval-scenes", "3", "--log-every", str(LOG_EVERY), "--margin-start", "1"])
    assert rc == 0
    assert "held-out best-of-3 mIoU" in capsys.readouterr().out
    record = json.loads((out / ts.RECORD_NAME).read_text())
    curve = record["loss_curve"]
    assert [p["step"] for p in curve] == [8, 16, 24]
    assert curve[-1]["loss"] < 0.8 * curve[0]["loss"]
    assert record["steps"] == STEPS and record["model_type"] == "scene"
    assert record["settings"]["workers"] == 1 and record["seconds"]["cpu"] > 0
    assert 0.0 <= record["held_out"]["best_of_3_miou"] <= 1.0 and record["held_out"]["objects"] > 0
    sam = load_sam("scene", out / ts.CHECKPOINT_NAME)  # segment-anything's layout, the registered architecture
    assert sum(p.numel() for p in sam.parameters()) == record["parameters"]


def test_shipped_checkpoint_record():
    """The checkpoint in the repository and its training record: small, and as good as the issue asks."""
    folder = ts.HERE / "scene_sam"
    record = json.loads((folder / ts.RECORD_NAME).read_text())
    assert (folder / ts.CHECKPOINT_NAME).stat().st_size <= 10 * 2**20
    assert record["seconds"]["quiet_wall_estimate"] <= 35 * 60
    held = record["held_out"]
    assert held["best_of_3_miou"] >= 0.85
    assert held["iou_head"]["pearson"] >= 0.9
    assert np.isfinite(held["best_mask_stability"]["mean"])
