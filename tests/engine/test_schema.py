"""Every result eac writes validates against the JSON Schema shipped in the package."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from eac.engine.cli import main
from eac.engine.dataset_schema import RESULT_KINDS, SCHEMA_PATH, SCHEMA_VERSION, load_schema, schema_for
from eac.engine.demo import demo_classifier_path
from eac.engine.errors import ConfigError
from eac.engine.scenes import make_scene

jsonschema = pytest.importorskip("jsonschema")

SCENE_SIZE = 64


def validate(document, kind: str) -> None:
    validator = jsonschema.Draft202012Validator(schema_for(kind), format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def invalid(document, kind: str) -> bool:
    return not jsonschema.Draft202012Validator(schema_for(kind)).is_valid(document)


def _images(folder, count=2):
    folder.mkdir()
    for i in range(count):
        scene = make_scene(np.random.default_rng(i), SCENE_SIZE)
        cv2.imwrite(str(folder / f"s{i}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    return folder


def _args(images, out, *extra):
    return ["explain", str(images), "--classifier", str(demo_classifier_path()), "--concepts", "grid",
            "--n-segments", "8", "--evaluations", "48", "--out", str(out), "--no-progress", *extra]


def _needs_version(data: dict) -> None:
    from eac.engine.dataset_schema import SCHEMA_VERSION

    assert data["schema_version"] == SCHEMA_VERSION


def test_the_schema_is_valid_draft_2020_12_and_shipped():
    assert SCHEMA_PATH.is_file() and SCHEMA_PATH.parent.name == "schema"
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for kind in RESULT_KINDS:
        jsonschema.Draft202012Validator.check_schema(schema_for(kind))
    assert schema["$defs"]["schema_version"]["const"] == SCHEMA_VERSION
    with pytest.raises(ConfigError):
        schema_for("nope")


def test_parquet_columns_are_the_schema_row(tmp_path):
    pytest.importorskip("pyarrow")
    from eac.engine.dataset import arrow_schema

    row = load_schema()["$defs"]["parquet_row"]
    assert arrow_schema().names == row["required"] == list(row["properties"])


def test_saved_folder_and_cli_json_validate(tmp_path, capsys):
    images = _images(tmp_path / "images")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(_args(images, out, "--json", "--metrics")) == 1
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["results"]) == 2 and len(printed["failures"]) == 1
    saved = json.loads((out / "s0" / "explanation.json").read_text())
    _needs_version(saved)
    validate(saved, "explanation")
    validate(printed, "cli_output")
    broken = dict(saved, value_type="probably")
    assert invalid(broken, "explanation")


def test_saved_multi_target_explanation_validates(tmp_path, capsys):
    images = _images(tmp_path / "images", 1)
    out = tmp_path / "out"
    assert main(_args(images / "s0.png", out, "--target", "0", "--target", "disk", "--json")) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "explanation.json").read_text())
    assert saved["values_shape"][0] == 2
    _needs_version(saved)
    validate(saved, "explanation")
    validate(printed, "cli_output")


def test_parquet_rows_and_summary_validate(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from eac.engine.dataset import SUMMARY_NAME, read_table

    images = _images(tmp_path / "images")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(_args(images, out, "--format", "parquet", "--metrics", "--target", "0", "--target", "1",
                      "--overlays", "--json")) == 1
    printed = json.loads(capsys.readouterr().out)
    rows = read_table(out).to_pylist()
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok", "failed"}
    for row in rows:
        validate(row, "parquet_row")
        json.loads(row["settings"])
        if row["status"] == "ok":
            json.loads(row["info"]) and json.loads(row["frame"])
            assert row["insertion_auc"] is not None
    validate(json.loads((out / SUMMARY_NAME).read_text()), "summary")
    validate(printed, "summary")
    assert invalid(dict(rows[0], status="maybe"), "parquet_row")
    assert invalid(dict(rows[0], masks=[{"size": [2, 2], "counts": "a b"}]), "parquet_row")
