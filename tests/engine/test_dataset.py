"""Dataset runs (`eac explain --format parquet`): the table, resuming, failures, kills, workers, Ray.

Everything runs on the shipped demo classifier with a grid of 8 concepts and a
small evaluation budget on tiny generated scenes, so a run takes about a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from eac.engine import dataset as ds
from eac.engine.cli import main
from eac.engine.demo import demo_classifier_path
from eac.engine.errors import ConfigError
from eac.engine.scenes import make_scene
from eac.kernels import rle

pads = pytest.importorskip("pyarrow.dataset")

SCENE_SIZE = 64
EVALUATIONS = 48  # eac needs ≥ 2 + 8·(N//2) = 34 coalitions for the N = 9 grid
ROOT = Path(__file__).resolve().parents[2]


def write_scenes(folder: Path, count: int, first_seed: int = 0) -> list[Path]:
    """``count`` generated scenes as PNG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        scene = make_scene(np.random.default_rng(first_seed + i), SCENE_SIZE)
        path = folder / f"scene{first_seed + i:03d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def explain_args(images: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", str(images), "--classifier", str(demo_classifier_path()), "--concepts", "grid",
            "--n-segments", "8", "--evaluations", str(EVALUATIONS), "--out", str(out), "--no-progress", *extra]


def config() -> ds.RunConfig:
    return ds.RunConfig(classifier=str(demo_classifier_path()), concepts="grid", n_segments=8,
                        options={"max_evaluations": EVALUATIONS, "min_evaluations": EVALUATIONS})


def by_image(table) -> dict[str, dict]:
    return {Path(r["image"]).name: r for r in table.to_pylist()}


def test_run_writes_the_table_and_summary_and_a_rerun_skips_everything(tmp_path, capsys):
    write_scenes(tmp_path / "images", 3)
    out = tmp_path / "out"
    assert main(explain_args(tmp_path / "images", out, "--format", "parquet", "--overlays")) == 0
    table = ds.read_table(out)
    assert table.num_rows == 3 and table.schema.equals(ds.arrow_schema())
    rows = by_image(table)
    for name, row in rows.items():
        assert row["status"] == "ok" and row["error"] is None and row["schema_version"] == 1
        assert len(row["image_sha256"]) == 64 and row["method"] == "eac" and row["num_concepts"] == 9
        assert len(row["values"]) == len(row["masks"]) == len(row["ranking"]) == 9
        assert json.loads(row["settings"])["concepts"] == {"source": "grid", "n_segments": 8}
        assert (out / row["overlay"]).is_file() and name[:-4] in row["overlay"]
        assert row["timings"]["evaluations"] > 0 and row["provider"] == "CPUExecutionProvider"
    # the folder reads as a plain pyarrow dataset too
    assert pads.dataset(ds.table_path(out)).to_table().num_rows == 3
    summary = json.loads((out / ds.SUMMARY_NAME).read_text())
    assert summary["counts"] == {"images": 3, "skipped": 0, "reused": 0, "explained": 3, "failed": 0, "rows": 3}
    assert summary["throughput"]["images_per_second"] > 0 and summary["failures"] == []
    err = capsys.readouterr().err
    assert "3 explained" in err

    parts = sorted(ds.table_path(out).iterdir())
    assert main(explain_args(tmp_path / "images", out, "--format", "parquet")) == 0
    summary = json.loads((out / ds.SUMMARY_NAME).read_text())
    assert summary["counts"] == {"images": 3, "skipped": 3, "reused": 0, "explained": 0, "failed": 0, "rows": 3}
    assert sorted(ds.table_path(out).iterdir()) == parts  # nothing rewritten
    # other settings are another key: the images are explained again, beside the first rows
    assert main(explain_args(tmp_path / "images", out, "--format", "parquet", "--seed", "1")) == 0
    assert ds.read_table(out).num_rows == 6


def test_a_bad_image_is_a_failure_row_and_the_run_goes_on(tmp_path, capsys):
    images = tmp_path / "images"
    write_scenes(images, 2)
    (images / "broken.png").write_bytes(b"\x89PNG this is not a png")
    out = tmp_path / "out"
    assert main(explain_args(images, out, "--format", "parquet", "--json")) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["counts"]["failed"] == 1
    assert "broken.png" in captured.err and "corrupt" in captured.err
    rows = by_image(ds.read_table(out))
    assert rows["broken.png"]["status"] == "failed" and "corrupt" in rows["broken.png"]["error"]
    assert "\n" not in rows["broken.png"]["error"] and rows["broken.png"]["values"] is None
    assert [rows[f"scene{i:03d}.png"]["status"] for i in range(2)] == ["ok", "ok"]
    # a re-run tries the failed image again (and only that one); the table keeps one row for it
    assert main(explain_args(images, out, "--format", "parquet")) == 1
    summary = json.loads((out / ds.SUMMARY_NAME).read_text())
    assert summary["counts"]["skipped"] == 2 and summary["counts"]["failed"] == 1
    assert ds.read_table(out).num_rows == 3
    # repaired (other bytes, same path): its result replaces the failure in the table and the report's rows
    write_scenes(tmp_path / "fixed", 1, first_seed=7)[0].replace(images / "broken.png")
    assert main(explain_args(images, out, "--format", "parquet")) == 0
    rows = ds.read_table(out).to_pylist()
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "ok"], rows  # the failure row was kept beside it


def test_overlays_asked_on_a_rerun_say_which_images_get_none(tmp_path, capsys):
    # --overlays added on a re-run drew nothing for the images already done, without a word
    images = tmp_path / "images"
    write_scenes(images, 2)
    out = tmp_path / "out"
    assert main(explain_args(images, out, "--format", "parquet")) == 0
    capsys.readouterr()
    assert main(explain_args(images, out, "--format", "parquet", "--overlays")) == 0
    err = capsys.readouterr().err
    assert "--overlays draws the images explained now, not those 2" in err and f"eac report {out}" in err
    assert not (out / ds.OVERLAY_DIR).exists()


def test_ctrl_c_says_what_was_saved_and_that_the_command_resumes(tmp_path):
    # it printed only "eac: interrupted"
    images = tmp_path / "images"
    write_scenes(images, 8)
    out = tmp_path / "out"
    argv = [*explain_args(images, out, "--format", "parquet", "--part-images", "1")]
    argv[argv.index("--evaluations") + 1] = "2048"  # slow enough to be stopped midway
    argv[argv.index("--n-segments") + 1] = "24"
    run = [sys.executable, "-c", "import sys; from eac.engine.cli import main; raise SystemExit(main(sys.argv[1:]))"]
    proc = subprocess.Popen([*run, *argv], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ds.table_path(out).is_dir() and ds.read_table(out).num_rows >= 1:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eac: interrupted after ") and "resumes" in lines[0], err
    saved = ds.read_table(out).num_rows
    assert 1 <= saved < 8
    assert main(argv) == 0
    assert ds.read_table(out).num_rows == 8


def test_rle_masks_and_values_match_the_python_api(tmp_path):
    from eac.engine import Classifier, Explainer
    from eac.engine.sources import make_source

    paths = write_scenes(tmp_path / "images", 2)
    out = tmp_path / "out"
    summary = ds.run_dataset(paths, out, config())
    assert summary["counts"]["explained"] == 2
    explainer = Explainer(Classifier.from_folder(demo_classifier_path()), seed=0,
                          max_evaluations=EVALUATIONS, min_evaluations=EVALUATIONS)
    rows = by_image(ds.read_table(out))
    for path in paths:
        expl = explainer.explain(str(path), make_source("grid", 8))
        row = rows[path.name]
        masks = rle.decode_masks(row["masks"])
        np.testing.assert_array_equal(masks, expl.masks)
        np.testing.assert_allclose(row["values"], expl.values, rtol=1e-9, atol=1e-12)
        assert row["target"] == expl.target and row["label"] == expl.labels[0]
        assert row["concept_areas"] == expl.masks.sum(axis=(1, 2)).tolist()


def test_the_library_prints_nothing_and_refuses_a_second_run_on_the_same_folder(tmp_path, capfd):
    paths = write_scenes(tmp_path / "images", 1)
    out = tmp_path / "out"
    seen = []
    ds.run_dataset(paths, out, config(), on_plan=lambda total, todo: seen.append((total, todo)),
                   on_result=lambda result: seen.append(result.ok))
    assert seen == [(1, 1), True]
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    with ds._RunLock(out), pytest.raises(ConfigError, match="another eac run"):
        ds.run_dataset(paths, out, config())


def test_missing_pyarrow_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ConfigError, match=r"pip install '\.\[parquet\]'"):
        ds.run_dataset([], tmp_path / "out", config())


def test_missing_ray_is_one_line_before_the_output_is_touched(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    images = write_scenes(tmp_path / "images", 1)
    with pytest.raises(ConfigError, match="--ray needs Ray Data"):
        ds.run_dataset(images, tmp_path / "out", config(), ray="")
    assert not (tmp_path / "out").exists()  # it once left an empty table folder and a summary behind


def test_sigkill_leaves_a_readable_table_and_a_rerun_finishes(tmp_path):
    count = 10
    write_scenes(tmp_path / "images", count)
    out = tmp_path / "out"
    code = "import sys; from eac.engine.cli import main; sys.exit(main(sys.argv[1:]))"
    args = explain_args(tmp_path / "images", out, "--format", "parquet", "--part-images", "1")
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    folder = ds.table_path(out)
    deadline = time.monotonic() + 60
    try:
        while not (folder.is_dir() and any(p.name.startswith("part-") for p in folder.iterdir())):
            assert proc.poll() is None, "the run ended before writing a part"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    table = ds.read_table(out)
    assert 1 <= table.num_rows < count
    assert all(s == "ok" for s in table.column("status").to_pylist())
    pads.dataset(folder).to_table()  # the plain dataset reads too (temporary files are hidden)
    assert main(explain_args(tmp_path / "images", out, "--format", "parquet")) == 0
    summary = json.loads((out / ds.SUMMARY_NAME).read_text())
    assert summary["counts"]["skipped"] >= table.num_rows
    assert summary["counts"]["skipped"] + summary["counts"]["explained"] == count
    final = ds.read_table(out)
    assert final.num_rows == count and len(set(final.column("image").to_pylist())) == count
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_a_crash_between_compaction_and_cleanup_loses_nothing_and_duplicates_nothing(tmp_path, monkeypatch):
    paths = write_scenes(tmp_path / "images", 3)
    out = tmp_path / "out"
    real_compact = ds.compact
    monkeypatch.setattr(ds, "compact", lambda out: 0)
    ds.run_dataset(paths, out, config(), part_images=1)
    parts = sorted(ds.table_path(out).iterdir())
    assert len(parts) == 3
    with monkeypatch.context() as m:  # the merged file is in place, the old parts are not deleted yet
        m.setattr(Path, "unlink", lambda self, missing_ok=False: None)
        assert real_compact(out) == 3
    assert len(list(ds.table_path(out).iterdir())) == 4
    assert [p.name for p in ds.part_files(ds.table_path(out))] == [
        p.name for p in ds.table_path(out).iterdir() if ds.COMPACT_TAG in p.name]
    assert ds.read_table(out).num_rows == 3
    monkeypatch.setattr(ds, "compact", real_compact)
    summary = ds.run_dataset(paths, out, config())  # the next run removes the replaced parts
    assert summary["counts"]["skipped"] == 3 and summary["counts"]["rows"] == 3
    assert [p.name for p in ds.table_path(out).iterdir()] == [p.name for p in ds.part_files(ds.table_path(out))]


def test_worker_processes_start_with_capped_blas_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # the user's own setting wins
    with ds._child_thread_env(1):
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["OPENBLAS_NUM_THREADS"] == "1"
        assert os.environ["MKL_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "3"


def test_two_workers_give_the_values_of_one_process(tmp_path):
    images = tmp_path / "images"
    write_scenes(images, 3)
    assert main(explain_args(images, tmp_path / "one", "--format", "parquet")) == 0
    assert main(explain_args(images, tmp_path / "two", "--workers", "2")) == 0
    one, two = by_image(ds.read_table(tmp_path / "one")), by_image(ds.read_table(tmp_path / "two"))
    assert one.keys() == two.keys()
    assert len({r["worker"] for r in two.values()}) >= 1
    summary = json.loads((tmp_path / "two" / ds.SUMMARY_NAME).read_text())
    assert summary["run"]["mode"] == "workers" and summary["run"]["workers"] == 2
    assert summary["run"]["threads_per_worker"] == max(1, ds.cpu_cores() // 2)
    for name in one:
        np.testing.assert_allclose(two[name]["values"], one[name]["values"], rtol=1e-5, atol=1e-7)
        assert two[name]["ranking"] == one[name]["ranking"] and two[name]["masks"] == one[name]["masks"]
        assert two[name]["settings_hash"] == one[name]["settings_hash"]


@pytest.fixture()
def ray_temp_dir(monkeypatch):
    """Ray's session folders (logs, sockets) in a short temporary folder removed after the test, not
    $TMPDIR/ray where every session stays (a socket path must stay under ~107 characters, so not tmp_path)."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="eac-ray-")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ray_gives_the_values_of_the_local_run(tmp_path, ray_temp_dir):
    pytest.importorskip("ray.data")
    paths = write_scenes(tmp_path / "images", 3)
    ds.run_dataset(paths, tmp_path / "local", config())
    summary = ds.run_dataset(paths, tmp_path / "ray", config(), ray="", ray_actors=2)
    assert summary["run"]["mode"] == "ray" and summary["run"]["workers"] == 2
    assert summary["counts"]["explained"] == 3
    local, ray = by_image(ds.read_table(tmp_path / "local")), by_image(ds.read_table(tmp_path / "ray"))
    assert local.keys() == ray.keys()
    for name in local:
        np.testing.assert_allclose(ray[name]["values"], local[name]["values"], rtol=1e-5, atol=1e-7)
        assert ray[name]["ranking"] == local[name]["ranking"] and ray[name]["masks"] == local[name]["masks"]
