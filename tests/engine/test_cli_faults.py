"""The command line under bad input and faults: one clear line, nothing lost, nothing half-written.

Each case of the reliability issue is a row below (with the cases that already
worked, so they keep working): the exit code, that stderr has exactly the
expected error lines and no traceback, and what exists on disk afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from eac.engine.cli import main
from eac.engine.demo import demo_classifier_path
from eac.engine.scenes import make_scene

SIZE = 128  # the demo classifier's input side


def _scene_png(path: Path, seed: int) -> Path:
    scene = make_scene(np.random.default_rng(seed), SIZE)
    cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture()
def workspace(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        _scene_png(images / f"s{i}.png", 300 + i)
    (tmp_path / "afile").write_text("not a folder")
    empty_masks = np.zeros((0, SIZE, SIZE), bool)
    np.save(tmp_path / "empty_masks.npy", empty_masks)
    return tmp_path


def _explain(ws: Path, *extra: str, images: str = "images/s0.png") -> list[str]:
    return ["explain", str(ws / images), "--classifier", str(demo_classifier_path()), "--concepts", "grid",
            "--n-segments", "9", "--no-progress", *extra]


@dataclass
class Case:
    name: str
    argv: object  # callable(workspace) -> argv
    code: int
    err: str  # a fragment of the (single) error line
    exists: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    err_lines: int = 1
    usage: bool = False  # a parser error (SystemExit): one line too, no usage block (it printed ~20 lines)
    setup: object = None
    extra: dict = field(default_factory=dict)


CASES = [
    Case("out is a file", lambda ws: _explain(ws, "--out", str(ws / "afile")), 2, "is a file"),
    Case("out under a file", lambda ws: _explain(ws, "--out", str(ws / "afile" / "sub")), 2, "is a file"),
    # /proc: a folder nothing can be created in, even by root (os.access said yes to root: the run did all
    # its work and then failed with exit 1)
    *([Case("out where nothing can be created", lambda ws: _explain(ws, "--out", "/proc/eac-out"), 2,
            "nothing can be created in /proc")] if Path("/proc/self").is_dir() else []),
    Case("out is a folder of other files", lambda ws: _explain(ws, "--out", str(ws / "images")), 2,
         "not an explanation", exists=("images/s0.png", "images/s1.png")),
    Case("corrupt image in a batch", lambda ws: _explain(ws, "--out", str(ws / "o"), images="images"), 1,
         "corrupt", exists=("o/s0/explanation.json", "o/s1/explanation.json"),
         setup=lambda ws: (ws / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff junk")),
    Case("image above the pixel limit", lambda ws: _explain(ws, "--out", str(ws / "o"), "--max-pixels", "100"), 1,
         "more than the limit", absent=("o/explanation.json",)),
    Case("zero concepts", lambda ws: ["explain", str(ws / "images/s0.png"), "--classifier",
                                      str(demo_classifier_path()), "--masks", str(ws / "empty_masks.npy"),
                                      "--out", str(ws / "o"), "--no-progress"], 1,
         "no concepts", exists=("o/explanation.json",)),
    Case("grid far too fine", lambda ws: _explain(ws, "--out", str(ws / "o"), "--n-segments", "100000"), 2,
         "--max-concepts", absent=("o",)),
    Case("evaluations below the method's minimum", lambda ws: _explain(ws, "--out", str(ws / "o"),
                                                                      "--evaluations", "1"), 2,
         "at least", absent=("o",)),
    Case("evaluations for a method without a budget", lambda ws: _explain(ws, "--out", str(ws / "o"),
                                                                         "--method", "loo", "--evaluations", "64"),
         2, "does not apply", absent=("o",)),
    Case("negative seed", lambda ws: _explain(ws, "--seed", "-1"), 2, "--seed", usage=True),
    Case("negative top-k", lambda ws: _explain(ws, "--top-k", "-3"), 2, "--top-k", usage=True),
    Case("zero threads", lambda ws: _explain(ws, "--threads", "0"), 2, "--threads", usage=True),
    Case("folder with images only in a sub-folder", lambda ws: _explain(ws, images="nested"), 2,
         "sub-folders are not searched", setup=lambda ws: (ws / "nested" / "inner").mkdir(parents=True)),
    Case("--n-segments with --masks (was ignored)", lambda ws: [
        "explain", str(ws / "images/s0.png"), "--classifier", str(demo_classifier_path()), "--masks",
        str(ws / "empty_masks.npy"), "--n-segments", "9", "--no-progress"], 2, "leave --n-segments out"),
    # argparse reports arguments no parser took from the top parser: it named `eac --help`
    Case("unknown flag", lambda ws: _explain(ws, "--nonsense"), 2, "unrecognized arguments: --nonsense", usage=True),
    # checked against the manifest before any work (it was a failure of every image, exit 1)
    Case("target out of range", lambda ws: _explain(ws, "--out", str(ws / "o"), "--target", "9"), 2,
         "--target: target class 9 is out of range", absent=("o",)),
    Case("target name unknown", lambda ws: _explain(ws, "--out", str(ws / "o"), "--target", "tabby", images="images",
                                                    ), 2, "--target: class name 'tabby' is not one of", absent=("o",)),
    Case("target out of range, table", lambda ws: _explain(ws, "--out", str(ws / "o"), "--target", "9",
                                                           "--format", "parquet", images="images"), 2,
         "--target: target class 9", absent=("o",)),
    Case("missing classifier folder", lambda ws: ["explain", str(ws / "images/s0.png"), "--classifier",
                                                  str(ws / "nowhere")], 2, "no such model folder"),
    Case("concepts --out without .npz", lambda ws: ["concepts", str(ws / "images/s0.png"), "--sam",
                                                    str(ws / "nowhere"), "--out", str(ws / "afile")], 2,
         "no such model folder"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_table(case, workspace, capsys):
    if case.setup is not None:
        case.setup(workspace)
    if case.usage:
        with pytest.raises(SystemExit) as info:
            main(case.argv(workspace))
        code = info.value.code
    else:
        code = main(case.argv(workspace))
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == case.err_lines, err
    if case.usage:
        assert err.strip().splitlines() == errors and errors[0].startswith("eac: error: "), err
        assert errors[0].endswith("(see `eac explain --help`)"), err
    assert case.err in errors[0], err
    for rel in case.exists:
        assert (workspace / rel).exists(), rel
    for rel in case.absent:
        assert not (workspace / rel).exists(), rel


def test_zero_concepts_json_is_strict_and_says_what_to_change(workspace, capsys):
    code = main(["explain", str(workspace / "images/s0.png"), "--classifier", str(demo_classifier_path()),
                 "--masks", str(workspace / "empty_masks.npy"), "--out", str(workspace / "o"), "--json",
                 "--metrics", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "superpixels" in captured.err  # the hint names another concept source

    def refuse(token):
        raise ValueError(f"non-strict JSON constant {token}")

    printed = json.loads(captured.out, parse_constant=refuse)
    saved = json.loads((workspace / "o" / "explanation.json").read_text(), parse_constant=refuse)
    assert printed["results"][0]["num_concepts"] == saved["num_concepts"] == 0
    assert printed["failures"][0]["image"].endswith("s0.png")


def test_json_has_one_shape_for_one_and_many_images(workspace, capsys):
    assert main(_explain(workspace, "--out", str(workspace / "one"), "--json")) == 0
    one = json.loads(capsys.readouterr().out)
    assert main(_explain(workspace, "--out", str(workspace / "many"), "--json", images="images")) == 0
    many = json.loads(capsys.readouterr().out)
    assert set(one) == set(many) == {"results", "failures"}
    assert len(one["results"]) == 1 and len(many["results"]) == 2


def test_rerun_into_the_same_out_leaves_no_stale_files(workspace, capsys):
    out = workspace / "o"
    assert main(_explain(workspace, "--out", str(out), "--top-k", "5")) == 0
    assert len(list(out.glob("top5_concept*.png"))) == 1
    assert main(_explain(workspace, "--out", str(out), "--top-k", "2")) == 0
    assert sorted(p.name[:5] for p in out.glob("top*_concept*.png")) == ["top1_", "top2_"]
    assert not [p for p in workspace.iterdir() if p.name.startswith(".o")]  # no temporary folders left


def test_unexpected_error_in_one_image_does_not_end_the_batch(workspace, capsys, monkeypatch):
    from eac.engine import sources

    real = sources.GridSource.__call__

    def flaky(self, crop, frame):
        if int(crop.sum()) % 2 == 0 and not getattr(flaky, "fired", False):
            flaky.fired = True
            raise RuntimeError("simulated bug\nsecond line")
        return real(self, crop, frame)

    monkeypatch.setattr(sources.GridSource, "__call__", flaky)
    for i in range(2, 6):
        _scene_png(workspace / "images" / f"s{i}.png", 400 + i)
    code = main(_explain(workspace, "--out", str(workspace / "o"), images="images"))
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("eac: error")]
    assert len(errors) == 1 and "RuntimeError: simulated bug" in errors[0] and "second line" not in err
    assert "Traceback" not in err
    assert len(list((workspace / "o").glob("*/explanation.json"))) == 5
    assert "5 of 6 images explained" in err and "1 failed" in err


def test_debug_shows_the_traceback(workspace, capsys):
    code = main(["--debug", *_explain(workspace, "--out", str(workspace / "afile"))])
    assert code == 2 and "Traceback" in capsys.readouterr().err


def _demo_folder_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "clf"
    shutil.copytree(demo_classifier_path(), folder)
    return folder


def test_damaged_model_of_the_same_size_is_detected(workspace, capsys):
    folder = _demo_folder_copy(workspace)
    data = bytearray((folder / "classifier.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "classifier.onnx").write_bytes(bytes(data))
    argv = ["explain", str(workspace / "images/s0.png"), "--classifier", str(folder), "--out", str(workspace / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "checksum differs" in err and len(err.strip().splitlines()) == 1
    assert not (workspace / "o").exists()


def test_nan_output_is_a_per_image_error_naming_the_model(workspace, capsys):
    onnx = pytest.importorskip("onnx")
    from eac.engine.manifest import ClassifierInput, ClassifierManifest, Preprocess, file_entry
    from onnx import TensorProto, helper

    folder = workspace / "nanclf"
    folder.mkdir()
    # logits = mean(x) * [0, 1] / 0  → NaN for class 0 (0/0), ±inf for class 1
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Unsqueeze", ["m", "axis"], ["m2"]),
         helper.make_node("Mul", ["m2", "w"], ["num"]),
         helper.make_node("Div", ["num", "zero"], ["logits"])],
        "nan", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [2], [0.0, 1.0]),
                     helper.make_tensor("zero", TensorProto.FLOAT, [2], [0.0, 0.0]),
                     helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, folder / "classifier.onnx")
    ClassifierManifest(files={"model": file_entry(folder, "classifier.onnx")},
                       input=ClassifierInput("input", SIZE, SIZE), logits_output="logits", num_classes=2,
                       preprocess=Preprocess(crop=(SIZE, SIZE), resize=SIZE)).write(folder)
    code = main(["explain", str(workspace / "images"), "--classifier", str(folder), "--concepts", "grid",
                 "--n-segments", "4", "--out", str(workspace / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("eac: error")]
    assert len(errors) == 2 and all("NaN" in line and str(folder) in line for line in errors)
    assert not list((workspace / "o").glob("*/explanation.json"))  # nothing half-written


def test_labels_shorter_than_the_class_count_are_refused_at_load(workspace, capsys):
    folder = _demo_folder_copy(workspace)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["labels"] = manifest["labels"][:2]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code = main(["explain", str(workspace / "images/s0.png"), "--classifier", str(folder), "--target", "3",
                 "--out", str(workspace / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "2 labels for 4 classes" in err and len(err.strip().splitlines()) == 1


_BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "segment_anything"):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None
    sys.meta_path.insert(0, Block())
    import importlib.util
    importlib.util.find_spec = lambda name, *a, **k: None if name.split(".")[0] == "torch" else _real(name, *a, **k)
    from eac.engine.cli import main
    raise SystemExit(main(sys.argv[1:]))
    """
).replace("import importlib.util\n", "import importlib.util\n_real = importlib.util.find_spec\n")


@pytest.mark.parametrize("argv", [["export", "sam", "--model-type", "vit_b", "--download", "--out", "X"],
                                  ["export", "classifier", "--module", "m:f", "--out", "X"],
                                  ["bench", "explain", "--quick", "--json", "X"]])
def test_export_without_torch_is_one_line(argv, tmp_path):
    argv = [a.replace("X", str(tmp_path / "x")) for a in argv]
    proc = subprocess.run([sys.executable, "-c", _BLOCK_TORCH, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "export extra" in proc.stderr and "PyTorch" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_concepts_reports_the_file_it_writes(tmp_path):
    from eac.engine.cli.concepts import npz_path

    assert npz_path(str(tmp_path / "afile")) == tmp_path / "afile.npz"
    assert npz_path(str(tmp_path / "b.npz")) == tmp_path / "b.npz"


def _concepts(ws: Path, out: str, image: str = "images/s0.png") -> list[str]:
    return ["concepts", str(ws / image), "--sam", "demo", "--out", out]


def test_concepts_creates_the_folders_of_its_file(workspace, capsys):
    # explain made missing parent folders, concepts refused them ("the parent folder is missing")
    out = workspace / "a" / "b" / "c.npz"
    assert main(_concepts(workspace, str(out))) == 0
    assert str(out) in capsys.readouterr().out
    from eac.engine.concepts import Concepts

    assert len(Concepts.load(str(out))) >= 2
    assert [p.name for p in out.parent.iterdir()] == ["c.npz"]  # no temporary file left


def test_concepts_with_no_mask_kept_says_what_to_change(workspace, capsys, monkeypatch):
    """SAM keeps no mask: a valid empty file, exit 0, and the hint eac explain gives (it printed only
    "0 concepts")."""
    from eac.engine.concepts import Concepts, Frame
    from eac.engine.sam import SamConceptGenerator

    def nothing(self, image):
        return Concepts(masks=np.zeros((0, *image.shape[:2]), bool), scores=np.zeros(0, np.float32), source="sam",
                        frame=Frame.identity(image.shape[:2]), timings={}, info={})

    monkeypatch.setattr(SamConceptGenerator, "generate", nothing)
    out = workspace / "none.npz"
    assert main(_concepts(workspace, str(out))) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("0 concepts") and "lower --pred-iou-thresh" in captured.err
    assert out.is_file()


@pytest.mark.parametrize("out, image, fragment", [
    ("images.npz", "images/s0.png", "is a folder; give a file path"),  # a folder of that name
    ("afile/c.npz", "images/s0.png", "cannot create its folder, "),  # under a file
    ("c.npz", "images", "is a folder, not an image file; give one image (`eac explain FOLDER`"),
])
def test_concepts_destination_and_image_errors_are_one_line(workspace, capsys, out, image, fragment):
    (workspace / "images.npz").mkdir()
    assert main(_concepts(workspace, str(workspace / out), image)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc: where nothing can be created, even by root")
@pytest.mark.parametrize("argv", [
    lambda ws: ["explain", str(ws / "images/s0.png"), "--classifier", "demo", "--sam", "demo", "--out", "/proc/eac-o"],
    lambda ws: _concepts(ws, "/proc/eac-c.npz"),
], ids=["explain", "concepts"])
def test_an_out_nothing_can_be_created_in_fails_before_any_model_is_loaded(argv, workspace, capsys, monkeypatch):
    # os.access said yes to root for /proc: `eac explain IMG --sam demo --out /proc/x` loaded both models,
    # explained the image and only then failed (exit 1)
    from eac.engine.classifier import Classifier
    from eac.engine.sam import SamConceptGenerator

    loaded: list[str] = []
    for cls in (Classifier, SamConceptGenerator):
        real = cls.from_folder

        def counted(owner, *args, _real=real, **kwargs):
            loaded.append(owner.__name__)
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_folder", classmethod(counted))
    code = main(argv(workspace))
    err = capsys.readouterr().err
    assert (code, loaded) == (2, []), err
    assert err.splitlines() == [err.strip()] and "nothing can be created in /proc (its filesystem does not " \
        "allow new entries)" in err, err  # one line, and not /proc's own "No such file or directory"


# --------------------------------------------------------------------------- kills and races
_RUN = textwrap.dedent(
    """
    import sys
    from eac.engine.cli import main
    raise SystemExit(main(sys.argv[1:]))
    """
)


def _spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _RUN, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _consistent(folder: Path) -> bool:
    data = json.loads((folder / "explanation.json").read_text())
    with np.load(folder / "masks.npz") as z:
        return str(z["save_id"]) == data["save_id"] and int(z["shape"][0]) == data["num_concepts"]


KILL_DELAYS = (0.8, 1.6, 2.4)


@pytest.mark.parametrize("delay", KILL_DELAYS)
def test_sigkill_leaves_only_complete_result_folders(workspace, delay):
    for i in range(2, 8):
        _scene_png(workspace / "images" / f"s{i}.png", 500 + i)
    out = workspace / "o"
    proc = _spawn(_explain(workspace, "--out", str(out), images="images"))
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folders = [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
    for folder in folders:  # every visible folder is one complete, consistent result
        assert _consistent(folder), folder.name
    # a re-run completes the batch and cleans nothing it should keep
    assert main(_explain(workspace, "--out", str(out), images="images")) == 0
    assert len([p for p in out.iterdir() if not p.name.startswith(".")]) == 8


def test_two_concurrent_runs_into_one_destination_stay_consistent(workspace):
    out = workspace / "same"
    runs = [_spawn(_explain(workspace, "--out", str(out), "--n-segments", n, images=f"images/s{i}.png"))
            for i, n in ((0, "9"), (1, "16"))]
    for proc in runs:
        assert proc.wait(timeout=120) == 0
    assert _consistent(out)


@pytest.mark.parametrize("command", [
    ["explain", "x.png", "--classifier", "demo", "--out", "o"],
    ["concepts", "x.png", "--sam", "demo", "--out", "o.npz"],
    ["sanity", "x.png", "--classifier", "demo"],
    ["serve", "--classifier", "demo"],
])
def test_every_command_with_a_point_grid_takes_the_flag_its_refusal_names(command):
    """The refusal of a large grid says "pass --allow-large": every command that can print it accepts that flag
    (``eac serve`` once did not)."""
    from eac.engine.cli import build_parser
    from eac.engine.cli.concepts import check_sam_limits
    from eac.engine.errors import ConfigError

    parser = build_parser()
    args = parser.parse_args([*command, "--points-per-side", "200"])
    with pytest.raises(ConfigError, match="pass --allow-large"):
        check_sam_limits(args)
    check_sam_limits(parser.parse_args([*command, "--points-per-side", "200", "--allow-large"]))
    # crop layers: layer k adds 4^k whole SAM runs (5 layers: 1365; a walkthrough waited 11 minutes for nothing)
    with pytest.raises(ConfigError, match=r"1365 SAM runs.*pass --allow-large"):
        check_sam_limits(parser.parse_args([*command, "--crop-n-layers", "5"]))
    check_sam_limits(parser.parse_args([*command, "--crop-n-layers", "2"]))
    check_sam_limits(parser.parse_args([*command, "--crop-n-layers", "5", "--allow-large"]))


#: What the ``eac`` console script runs.
_CONSOLE_SCRIPT = "import sys; from eac.engine.cli import main; sys.argv[0] = 'eac'; sys.exit(main())"


@pytest.mark.parametrize("argv", [["--version"], ["demo", "--concepts", "superpixels"]],
                         ids=["version", "demo"])
def test_a_reader_that_went_away_ends_the_command_quietly(argv, tmp_path):
    """``eac ... | head``: stdout is a pipe nobody reads any more. Without PYTHONUNBUFFERED (a user's shell) the
    output sits in Python's buffer until exit, where the failed flush printed "Exception ignored ...
    BrokenPipeError" and exited 120; it must end with the shell's code for SIGPIPE and say nothing."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        proc = subprocess.run([sys.executable, "-c", _CONSOLE_SCRIPT, *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, timeout=300)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141
