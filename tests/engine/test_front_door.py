"""What a new user tripped over (issue 21), each as the command line shows it: exit code, output, what is on disk.

The distribution's name in every install hint; models shipped in the package by name;
``eac explain`` without ``--out`` and its ``--help``; dataset runs (progress bar, a row for
every file, no rate for failures, the lock file); the README's promises (the table's
columns, where the checksum cache lives).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from eac.engine import shipped
from eac.engine.batching import DEFAULT_BATCH_SIZE
from eac.engine.cli import main
from eac.engine.demo import demo_classifier_path, demo_sam_path
from eac.engine.distribution import DISTRIBUTION, install_hint, installed_version
from eac.engine.errors import ConfigError, ModelFolderError
from eac.engine.manifest import VERIFIED_CACHE_NAME, eac_version
from eac.engine.methods import registry
from eac.engine.scenes import SHAPES, make_scene
from eac.engine.shipped import resolve_model_folder, shipped_names
from eac.engine.sources import DEFAULT_SEGMENTS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SCENE_SIZE = 64
#: The cheapest method (N + 1 evaluations) on a 4-cell grid: a run takes a fraction of a second.
FAST = ("--concepts", "grid", "--n-segments", "4", "--method", "loo")
#: An install command written by hand instead of through eac.engine.distribution.install_hint.
HAND_WRITTEN_INSTALL = re.compile(r"""pip install[^\n"']*["']?(eac\[|\.\[|-e )""")


def scene_png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = make_scene(np.random.default_rng(seed), SCENE_SIZE)
    cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    return path


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line]


# ---------------------------------------------------------------------- the name (defects 1-2)
def test_the_distribution_is_explain_any_concept_and_the_version_is_read_under_that_name():
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "explain-any-concept"
    assert installed_version() == eac_version() == project["version"]  # "unknown" if it read the old name
    assert project["scripts"] == {"eac": "eac.engine.cli:main"}


def test_install_hints_name_the_distribution_and_the_checkout():
    assert install_hint("cpu") == ("pip install 'explain-any-concept[cpu]' "
                                   "(from a source checkout: pip install '.[cpu]')")
    assert install_hint("export", "hf").startswith("pip install 'explain-any-concept[export,hf]'")


def test_no_message_spells_an_install_command_by_hand():
    assert HAND_WRITTEN_INSTALL.search("pip install 'eac[cpu]'")  # what the checker catches
    assert HAND_WRITTEN_INSTALL.search("""pip install torch==2.13.0 -e '.[export]'""")
    assert not HAND_WRITTEN_INSTALL.search("pip install --no-deps efficientsam==1.0.0")
    found = []
    for folder in ("engine", "export", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "distribution.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if HAND_WRITTEN_INSTALL.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


# ---------------------------------------------------------------------- shipped models by name (defect 6)
def test_names_resolve_to_the_shipped_folders_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    assert shipped_names("classifier") == shipped_names("sam") == ("demo",)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # e.g. `eac demo --out demo`
    assert resolve_model_folder("classifier", "demo") == demo_classifier_path()
    assert resolve_model_folder("classifier", "./demo") == Path("demo")  # a folder of that name, as a path
    assert resolve_model_folder("classifier", tmp_path / "demo") == tmp_path / "demo"
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(ModelFolderError, match="is a file"):
        resolve_model_folder("classifier", "afile")
    with pytest.raises(ModelFolderError, match=r"no such model folder, and not the name of a shipped sam \(demo\)"):
        resolve_model_folder("sam", "nonesuch")
    with pytest.raises(ConfigError, match="unknown model kind"):
        resolve_model_folder("tokenizer", "demo")


def test_the_python_api_takes_the_shipped_names_too(tmp_path, monkeypatch):
    # Classifier.from_folder("demo") said "demo: no such model folder" while every command took the name
    from eac.engine import Classifier, SamConceptGenerator

    monkeypatch.chdir(tmp_path)
    assert Classifier.from_folder("demo").folder == demo_classifier_path()
    assert SamConceptGenerator.from_folder("demo").settings.prompt_schedule == "coarse-to-fine"  # its manifest's
    (tmp_path / "demo").mkdir()
    with pytest.raises(ModelFolderError, match=r"no manifest\.json"):  # a folder of that name, given as a path
        Classifier.from_folder("./demo")


def test_explain_takes_the_demo_classifier_by_name(tmp_path, capsys):
    image = scene_png(tmp_path / "s.png", 1)
    assert main(["explain", str(image), "--classifier", "demo", *FAST, "--out", str(tmp_path / "o"),
                 "--json", "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out)["results"][0]
    assert record["labels"][0] in SHAPES  # the demo classifier's classes
    assert (tmp_path / "o" / "explanation.json").is_file()
    assert main(["explain", str(image), "--classifier", "nonesuch", *FAST, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == ["eac: error: nonesuch: no such model folder, and not the name of a shipped "
                                "classifier (demo)"]
    assert not (tmp_path / "p").exists()


def test_a_shipped_name_this_install_lacks_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(shipped.SHIPPED_MODELS["sam"], "demo", lambda: tmp_path / "absent")
    assert main(["demo", "--sam", "demo", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the shipped sam 'demo' is not in this install" in err[0]
    assert not (tmp_path / "d").exists()


def test_bench_takes_shipped_names(monkeypatch, capsys):
    pytest.importorskip("torch")
    from eac.bench import registry

    seen = {}

    class Report:
        def render(self) -> str:
            return "a report"

    def run_workload(opts):
        seen["opts"] = opts
        return Report()

    monkeypatch.setattr(registry, "run_workload", run_workload)
    assert main(["bench", "explain", "--classifier", "demo", "--quiet"]) == 0
    assert seen["opts"].classifier == str(demo_classifier_path())
    assert main(["bench", "explain", "--classifier", "nonesuch", "--quiet"]) == 2
    assert "shipped classifier (demo)" in capsys.readouterr().err


def test_sam_demo_by_name(tmp_path, capsys):
    assert demo_sam_path().is_dir()  # the package ships it (issue 17)
    image = scene_png(tmp_path / "s.png", 2)
    assert main(["concepts", str(image), "--sam", "demo", "--out", str(tmp_path / "c.npz")]) == 0
    assert (tmp_path / "c.npz").is_file()
    capsys.readouterr()
    assert main(["explain", str(image), "--classifier", "demo", "--sam", "demo", "--method", "loo", "--json",
                 "--no-progress"]) == 0  # the trained SAM keeps the scene's objects
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["output_folder"] is None and len(result["values"]) >= 2


# ---------------------------------------------------------------------- eac explain: --out, --help (defects 3-4)
def test_explain_without_out_writes_nothing_and_json_alone_prints_everything(tmp_path, monkeypatch, capsys):
    image = scene_png(tmp_path / "in" / "s.png", 3)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert main(["explain", str(image), "--classifier", "demo", *FAST, "--no-progress"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "eac: error: give --out FOLDER for the results (or --json to print them without writing files)"]
    assert main(["explain", str(image), "--classifier", "demo", *FAST, "--json", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    record = printed["results"][0]
    assert record["output_folder"] is None and "masks_file" not in record and record["num_concepts"] == 4
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, in the working folder or anywhere
    jsonschema = pytest.importorskip("jsonschema")
    from eac.engine.dataset_schema import schema_for

    jsonschema.validate(printed, schema_for("cli_output"))


def test_out_holds_one_image_itself_and_one_folder_per_image_of_many(tmp_path, capsys):
    images = tmp_path / "images"
    for i in range(2):
        scene_png(images / f"s{i}.png", 10 + i)
    assert main(["explain", str(images / "s0.png"), "--classifier", "demo", *FAST, "--out", str(tmp_path / "one"),
                 "--no-progress"]) == 0
    assert (tmp_path / "one" / "explanation.json").is_file()
    assert capsys.readouterr().err.strip().endswith(f"results in {tmp_path / 'one'}")
    assert main(["explain", str(images), "--classifier", "demo", *FAST, "--out", str(tmp_path / "many"),
                 "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["s0", "s1"]
    assert all((tmp_path / "many" / f"s{i}" / "explanation.json").is_file() for i in range(2))


def _help_lines(monkeypatch, capsys) -> dict[str, str]:
    """``eac explain --help``: each option's entry on one line (a wide terminal), keyed by the option."""
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--help"])
    assert exit_info.value.code == 0
    lines: dict[str, str] = {}
    option = None
    for line in capsys.readouterr().out.splitlines():
        match = re.match(r"  (--[a-z-]+)", line)
        if match:
            option = match.group(1)
            lines[option] = line
        elif option is not None and line.startswith("   "):  # the entry's help, below a long option
            lines[option] += " " + line.strip()
        else:
            option = None
    return lines


def test_help_says_the_defaults_and_what_out_holds(monkeypatch, capsys):
    lines = _help_lines(monkeypatch, capsys)
    assert "required unless --json" in lines["--out"] and "for one image file, OUT itself holds" in lines["--out"]
    assert "one sub-folder OUT/NAME per image" in lines["--out"]
    assert f"(default: {DEFAULT_SEGMENTS})" in lines["--n-segments"]
    assert f"(default: {DEFAULT_BATCH_SIZE}, " in lines["--batch-size"]
    for name, cls in registry().items():
        if cls.budget_option is not None:
            assert f"{name} {cls.defaults[cls.budget_option]}" in lines["--evaluations"]
    assert "when none of --sam, --concepts, --masks is given: superpixels" in lines["--concepts"]
    assert "(default: eac)" in lines["--method"] and "--list-methods" in lines["--method"]
    assert "or the name of a model shipped in the package: demo" in lines["--classifier"]
    assert not [name for name, cls in registry().items() if cls.summary in "\n".join(lines.values())]


def test_list_methods_prints_one_method_per_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--list-methods"])  # no images, no classifier: it answers before those are checked
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(registry())
    for line, (name, cls) in zip(lines, registry().items(), strict=True):
        assert line.split()[0] == name and cls.summary in line and cls.cost in line


# ---------------------------------------------------------------------- dataset runs (defect 8)
def _parquet(images: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", str(images), "--classifier", "demo", *FAST, "--format", "parquet", "--out", str(out), *extra]


def test_no_empty_progress_bar_when_pyarrow_is_missing(tmp_path, monkeypatch, capsys):
    scene_png(tmp_path / "images" / "s0.png", 20)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(_parquet(tmp_path / "images", tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "explaining:" not in err and err.count("\n") == 1
    assert err.startswith("eac: error: --format parquet needs pyarrow: pip install 'explain-any-concept[parquet]'")


def test_every_file_gets_its_rows_and_nothing_to_do_draws_no_bar(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from eac.engine import dataset as ds

    images = tmp_path / "images"
    for i in range(2):
        scene_png(images / f"s{i}.png", 30 + i)
    out = tmp_path / "out"
    assert main(_parquet(images, out)) == 0
    err = capsys.readouterr().err
    assert "explaining:" in err and "images/s" in err  # the bar and the rate are there when there is work
    assert not (out / ds.LOCK_NAME).exists()

    assert main(_parquet(images, out)) == 0  # nothing to do: no bar, no rate
    err = capsys.readouterr().err
    assert "explaining:" not in err and "images/s" not in err and "2 already done" in err

    shutil.copy(images / "s0.png", images / "s2.png")  # same bytes, a new name
    assert main(_parquet(images, out)) == 0
    err = capsys.readouterr().err
    assert "explaining:" not in err and "1 copied (same bytes" in err
    summary = json.loads((out / ds.SUMMARY_NAME).read_text())
    assert summary["counts"] == {"images": 3, "skipped": 2, "reused": 1, "explained": 0, "failed": 0, "rows": 3}
    rows = {Path(r["image"]).name: r for r in ds.read_table(out).to_pylist()}
    assert sorted(rows) == ["s0.png", "s1.png", "s2.png"]
    assert rows["s2.png"]["values"] == rows["s0.png"]["values"] and rows["s2.png"]["status"] == "ok"
    assert rows["s2.png"]["image_sha256"] == rows["s0.png"]["image_sha256"]
    assert not (out / ds.LOCK_NAME).exists()


def test_a_run_whose_only_image_is_corrupt_reports_no_rate(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from eac.engine import dataset as ds

    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.png").write_bytes(b"\x89PNG not an image")
    out = tmp_path / "out"
    assert main(_parquet(images, out, "--no-progress")) == 1
    err = capsys.readouterr().err
    assert "corrupt" in err and "images/s" not in err and "0 explained" in err
    summary = json.loads((out / ds.SUMMARY_NAME).read_text())
    assert summary["throughput"]["images_per_second"] is None and summary["counts"]["failed"] == 1
    assert not (out / ds.LOCK_NAME).exists()


def test_the_lock_file_goes_with_its_run_and_still_keeps_a_second_run_out(tmp_path):
    from eac.engine import dataset as ds

    out = tmp_path / "out"
    out.mkdir()
    with ds._RunLock(out):
        assert (out / ds.LOCK_NAME).is_file()
        with pytest.raises(ConfigError, match="another eac run"), ds._RunLock(out):
            pass
    assert not (out / ds.LOCK_NAME).exists()
    # a run that opened the file just before its holder removed it must not count it as its lock
    path = out / ds.LOCK_NAME
    path.write_text("")
    with open(path) as stale:
        assert ds._same_file(stale, path)
        path.unlink()
        assert not ds._same_file(stale, path)
        path.write_text("")
        assert not ds._same_file(stale, path)


# ---------------------------------------------------------------------- the README (defects 8, 9, 7, 6)
def test_readme_lists_the_tables_columns_from_its_schema():
    pytest.importorskip("pyarrow")
    from eac.engine.dataset import arrow_schema
    from eac.engine.dataset_schema import load_schema, parquet_columns_table

    schema = arrow_schema()
    assert list(load_schema()["$defs"]["parquet_row"]["properties"]) == schema.names
    assert parquet_columns_table(schema) in README


def test_readme_says_where_the_checksum_cache_lives_and_how_to_move_it():
    assert f"~/.cache/eac/{VERIFIED_CACHE_NAME}" in README and "EAC_CACHE=DIR" in README


def test_readme_shows_the_demo_classifier_by_name_and_how_to_get_torchvision():
    assert "eac explain eac-demo/input.png --classifier demo --sam demo --out explained" in README
    assert "pip install torch==2.14.1 torchvision==0.29.1" in README
    assert "explain-any-concept" in README and "pip install eac" in README  # the name, and why not eac
