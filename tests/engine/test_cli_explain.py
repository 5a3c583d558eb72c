"""`eac explain` and `eac demo` end to end on the shipped demo classifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from eac.engine.cli import main
from eac.engine.scenes import SHAPES, make_scene


def _write_scene(path, seed):
    scene = make_scene(np.random.default_rng(seed), 128)
    cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    return scene


def _masks(folder):
    """The concept masks an explanation folder holds (masks.npz, bit-packed), K×H×W bool."""
    masks = np.load(folder / "masks.npz")
    shape = tuple(masks["shape"])
    return np.unpackbits(masks["packed"], count=int(np.prod(shape))).reshape(shape).astype(bool)


def test_demo_finds_the_red_shape(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["results"][0]
    scene = make_scene(np.random.default_rng(0), 128)
    assert data["labels"] == [SHAPES[scene.label]]
    masks = _masks(tmp_path / "d")
    top = data["ranking"][0]
    on_key = (masks[top] & scene.key_mask).sum() / masks[top].sum()
    assert on_key > 0.8
    assert data["info"]["metrics"]["insertion_auc"] > data["info"]["metrics"]["deletion_auc"]
    for name in ("overlay.png", f"top1_concept{top}.png", "input.png", "explanation.json"):
        assert (tmp_path / "d" / name).is_file()  # the cut-out is named by rank and by the index the ranking prints
    # the shipped SAM's recommended prompts, recorded with the explanation; the reference grid is one flag away
    assert data["info"]["concept_settings"]["prompt_schedule"] == "coarse-to-fine"
    assert main(["demo", "--out", str(tmp_path / "g"), "--json", "--prompt-schedule", "grid"]) == 0
    grid = json.loads(capsys.readouterr().out)["results"][0]
    assert grid["info"]["concept_settings"]["prompt_schedule"] == "grid"
    assert grid["num_concepts"] == data["num_concepts"]  # this scene: the same objects either way
    grid_top = _masks(tmp_path / "g")[grid["ranking"][0]]
    assert (grid_top & scene.key_mask).sum() / grid_top.sum() > 0.8


@pytest.mark.parametrize("method", ["cam", "secam"])
def test_demo_runs_every_listed_method(tmp_path, capsys, method):
    # the shipped demo classifier has a feature_map output; before it had one, cam/secam were listed by
    # `eac demo --method` and refused ("this model folder has no feature_map output")
    assert main(["demo", "--method", method, "--out", str(tmp_path / "d"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["results"][0]
    assert data["method"] == method
    scene = make_scene(np.random.default_rng(0), 128)
    top = _masks(tmp_path / "d")[data["ranking"][0]]
    assert (top & scene.key_mask).sum() / top.sum() > 0.8


def test_demo_prompt_schedule_without_sam_is_one_line(tmp_path, capsys):
    assert main(["demo", "--concepts", "superpixels", "--prompt-schedule", "grid", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prompt-schedule" in err[0] and "superpixels" in err[0]


def test_explain_folder_skips_bad_images_and_keeps_the_rest(tmp_path, demo_classifier_folder, capsys):
    images = tmp_path / "images"
    images.mkdir()
    scenes = [_write_scene(images / f"s{i}.png", 100 + i) for i in range(2)]
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    out = tmp_path / "out"
    code = main(["explain", str(images), "--classifier", str(demo_classifier_folder), "--concepts", "grid",
                 "--n-segments", "16", "--out", str(out), "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # one image failed...
    assert "broken.jpg" in captured.err and "corrupt" in captured.err
    printed = json.loads(captured.out)  # ...but the others were explained and saved
    results = printed["results"]
    assert len(results) == 2
    assert [Path(f["image"]).name for f in printed["failures"]] == ["broken.jpg"]
    for i, scene in enumerate(scenes):
        folder = out / f"s{i}"
        assert (folder / "explanation.json").is_file() and (folder / "overlay.png").is_file()
        assert results[i]["targets"] == [scene.label]


def test_images_of_one_name_get_folders_of_their_own(tmp_path, demo_classifier_folder, capsys):
    """d1/c.png, d1/c_2.png and d2/c.png: the second 'c' was named c_<count of names so far> = c_2, the folder of
    d1/c_2.png, and overwrote it (exit 0, one result silently gone)."""
    for folder, stem, seed in (("d1", "c", 1), ("d1", "c_2", 2), ("d2", "c", 3)):
        (tmp_path / folder).mkdir(exist_ok=True)
        _write_scene(tmp_path / folder / f"{stem}.png", seed)
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "d1"), str(tmp_path / "d2"), "--classifier", str(demo_classifier_folder),
                 "--concepts", "grid", "--n-segments", "4", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    saved = {p.parent.name: json.loads(p.read_text())["info"]["image"] for p in out.glob("*/explanation.json")}
    assert len(saved) == 3 and len(set(saved.values())) == 3
    assert Path(saved["c_2"]).parent.name == "d1"  # d1/c_2.png keeps its own folder


def test_explain_with_label_masks_target_name_and_metrics(tmp_path, demo_classifier_folder, capsys):
    scene = _write_scene(tmp_path / "scene.png", 7)
    labels = np.zeros((128, 128), np.uint8)
    for i, m in enumerate(scene.object_masks, start=1):
        labels[m] = i
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    other = SHAPES[(scene.label + 1) % len(SHAPES)]
    code = main(["explain", str(tmp_path / "scene.png"), "--classifier", str(demo_classifier_folder),
                 "--masks", str(tmp_path / "labels.png"), "--target", other, "--metrics",
                 "--method", "shapley-exact", "--out", str(tmp_path / "o"), "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)["results"][0]
    assert data["labels"] == [other]
    assert data["num_concepts"] == len(scene.object_masks)
    assert data["value_type"] == "shapley"
    assert 0 <= data["info"]["metrics"]["insertion_auc"] <= 100
    # two targets: the printed ranking is the first one's, and says so (it did not)
    first, second = SHAPES[scene.label], other
    assert main(["explain", str(tmp_path / "scene.png"), "--classifier", str(demo_classifier_folder),
                 "--masks", str(tmp_path / "labels.png"), "--target", first, "--target", second,
                 "--method", "shapley-exact", "--no-progress", "--out", str(tmp_path / "two")]) == 0
    printed = capsys.readouterr().out
    assert f"are {first}'s, the first of 2 targets" in printed


def test_explain_errors_are_one_line(tmp_path, demo_classifier_folder, capsys):
    _write_scene(tmp_path / "scene.png", 3)
    code = main(["explain", str(tmp_path / "scene.png"), "--classifier", str(demo_classifier_folder),
                 "--target", "7", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0 and "out of range" in err and "Traceback" not in err
    code = main(["explain", str(tmp_path / "scene.png"), "--classifier", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code != 0 and "no such model folder" in err and len(err.strip().splitlines()) == 1


def test_evaluation_budget_flag(tmp_path, demo_classifier_folder, capsys):
    _write_scene(tmp_path / "scene.png", 11)
    base = ["explain", str(tmp_path / "scene.png"), "--classifier", str(demo_classifier_folder),
            "--concepts", "slic", "--n-segments", "24", "--json", "--out"]
    assert main([*base, str(tmp_path / "a"), "--evaluations", "128"]) == 0
    small = json.loads(capsys.readouterr().out)["results"][0]
    assert main([*base, str(tmp_path / "b"), "--evaluations", "1024"]) == 0
    large = json.loads(capsys.readouterr().out)["results"][0]
    assert small["num_concepts"] > 16  # not enumerated: the budget is what bounds the evaluations
    assert small["num_evaluations"] <= 128 + 1 < large["num_evaluations"] <= 1024 + 1
    # too small a budget for this many concepts: refused before any work, saying how much is needed
    assert main([*base, str(tmp_path / "c"), "--evaluations", "16"]) == 1
    assert "raise --evaluations to" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "c"), "--evaluations", "64", "--method", "loo"]) != 0
    assert "does not apply" in capsys.readouterr().err


def test_a_budget_below_the_minimum_asks_for_what_is_needed(tmp_path, demo_classifier_folder, capsys):
    # 4 concepts: 16 coalitions are all of them (exact values); the message asked for 18
    _write_scene(tmp_path / "scene.png", 11)
    base = ["explain", str(tmp_path / "scene.png"), "--classifier", str(demo_classifier_folder),
            "--concepts", "grid", "--n-segments", "4", "--json", "--out"]
    assert main([*base, str(tmp_path / "a"), "--evaluations", "5"]) == 1
    err = capsys.readouterr().err
    assert "raise --evaluations to 16" in err and "every coalition" in err, err
    assert main([*base, str(tmp_path / "b"), "--evaluations", "16"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["num_concepts"] == 4 and result["info"]["stop_reason"] == "enumerated"


def test_kernelshap_refuses_fewer_samples_than_unknowns(tmp_path, demo_classifier_folder, capsys):
    """5 samples for 16 concepts: the regression has 15 unknowns, so its values were one of infinitely many
    least-squares solutions, printed as a confident ranking (exit 0)."""
    _write_scene(tmp_path / "scene.png", 12)
    base = ["explain", str(tmp_path / "scene.png"), "--classifier", str(demo_classifier_folder),
            "--concepts", "grid", "--n-segments", "16", "--method", "kernelshap", "--json", "--out"]
    assert main([*base, str(tmp_path / "a"), "--evaluations", "5"]) == 1
    assert "raise --evaluations to 15" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "b"), "--evaluations", "15"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["num_concepts"] == 16


def _as_shown(line: str) -> str:
    """What a terminal shows for one output line: each carriage return goes back to column 0 and overwrites."""
    shown: list[str] = []
    for part in line.split("\r"):
        shown = list(part) + shown[len(part):]
    return "".join(shown).rstrip()


def test_per_image_lines_are_not_written_into_the_progress_bar(tmp_path):
    # the bar (stderr) and the per-image lines (stdout) share a terminal: printed plainly, a line began
    # right after the bar's text ("…[00:00<?, ?image/s, s1.png]imgs/s1.png → out/s1")
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(3):
        cv2.imwrite(str(images / f"s{seed}.png"), make_scene(np.random.default_rng(seed), 128).image[..., ::-1])
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from eac.engine.cli import main; raise SystemExit(main(sys.argv[1:]))",
         "explain", str(images), "--classifier", "demo", "--concepts", "grid", "--n-segments", "4",
         "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})  # both streams in the order written, as on a terminal
    assert proc.returncode == 0, proc.stdout
    assert "explaining:" in proc.stdout  # the bar was drawn
    shown = [_as_shown(line) for line in proc.stdout.split("\n")]
    arrows = [line for line in shown if "→" in line]
    assert len(arrows) == 3 and all(line.startswith(str(images)) for line in arrows), arrows
