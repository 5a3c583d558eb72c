"""``eac report``: a static page about a run, read back in a real Chromium (tests/browser.py).

A small Parquet run (generated scenes, the shipped demo classifier, 4 grid concepts, one corrupt image, one
image deleted after the run) and a small run of explanation folders. The page must load offline with no
console error, show every explained image and the cut-outs, hold exactly the table's rows, sort and page.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from eac.engine.cli import main
from eac.engine.demo import demo_classifier_path
from eac.engine.report import FILES_NAME, REPORT_NAME, read_run, write_report
from eac.engine.report.page import COLUMNS
from eac.engine.scenes import make_scene

pytest.importorskip("pyarrow")

SCENE_SIZE = 64
SCENES = 5
#: Grid concepts per scene: 2^4 coalitions, so eac enumerates them (exact, fast).
SEGMENTS = "4"


def _scenes(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        scene = make_scene(np.random.default_rng(i), SCENE_SIZE)
        path = folder / f"scene{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def _explain(images: Path, out: Path, *extra: str) -> None:
    args = ["explain", str(images), "--classifier", str(demo_classifier_path()), "--concepts", "grid",
            "--n-segments", SEGMENTS, "--out", str(out), "--no-progress", *extra]
    assert main(args) in (0, 1)


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory):
    """OUT of a Parquet run: SCENES scenes (the last deleted afterwards) and one corrupt file."""
    root = tmp_path_factory.mktemp("report")
    paths = _scenes(root / "images", SCENES)
    (root / "images" / "corrupt.png").write_bytes(b"not an image")
    out = root / "run"
    _explain(root / "images", out, "--format", "parquet")
    paths[-1].unlink()  # the table keeps its masks and values, not the image
    return out


def _table_rows(out: Path) -> list[dict]:
    from eac.engine.dataset import read_table

    return sorted(read_table(out).to_pylist(), key=lambda r: (r["image"], r["target_index"]))


def _expected_cells(row: dict) -> dict:
    """What the page's table must hold for one Parquet row (exact values, data-v text)."""
    ok = row["status"] == "ok"
    values = row["values"] or []
    top = max(range(len(values)), key=lambda i: (values[i], -i)) if ok and values else None
    info = json.loads(row["info"]) if row["info"] else {}
    ties = row["ties"]

    def text(v):
        return "" if v is None else repr(v) if isinstance(v, float) else str(v)

    return {
        "image": row["image"], "class": row["label"] if ok else "", "probability": text(row["probability"]),
        "top_concept": text(top), "top_value": text(None if top is None else values[top]),
        "top_stderr": text(None if top is None or row["stderr"] is None else row["stderr"][top]),
        "evaluations": text(row["num_evaluations"]), "stop_reason": text(info.get("stop_reason")),
        "ties": text(None if ties is None else len({i for g in ties for i in g})), "status": row["status"],
    }


def _page_table(page) -> list[dict]:
    """Every row of the page's table (hidden ones too), as {column key: data-v}."""
    return page.evaluate("""() => {
        const keys = Array.from(document.querySelectorAll('#rows thead th')).map(th => th.dataset.key);
        return Array.from(document.querySelectorAll('#rows tbody tr')).map(tr =>
            Object.fromEntries(Array.from(tr.cells).map((td, c) => [keys[c], td.dataset.v])));
    }""")


def _visible_column(page, key: str) -> list[str]:
    c = [k for k, _, _ in COLUMNS].index(key)
    return page.evaluate(f"""() => Array.from(document.querySelectorAll('#rows tbody tr'))
        .filter(tr => !tr.hidden).map(tr => tr.cells[{c}].dataset.v)""")


# ---------------------------------------------------------------------- in the browser
def test_report_page_shows_every_image_and_the_parquet_table(parquet_run, chromium):
    summary = write_report(parquet_run)
    assert summary.page == parquet_run / REPORT_NAME and summary.failed == 1 and summary.problems == 1
    table = _table_rows(parquet_run)
    ok_rows = [r for r in table if r["status"] == "ok"]
    assert len(table) == SCENES + 1 and len(ok_rows) == SCENES

    page, errors = chromium.new_page()
    page.set_viewport_size({"width": 1280, "height": 12000})  # every lazy image in view
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(summary.page.as_uri())
    page.wait_for_load_state("load")
    assert all(url.startswith("file://") for url in requests)  # nothing from the network: it opens offline
    # Every explained image has its overlay thumbnail in its class's gallery, loaded; so do the cut-outs.
    # Lazy images do not hold the load event back: wait until each has finished (loaded or failed).
    page.wait_for_function("() => Array.from(document.querySelectorAll('.grid img')).every(img => img.complete)")
    gallery = page.evaluate("""() => Array.from(document.querySelectorAll('[id^=class-] + .grid img'))
        .map(img => [img.alt, img.complete && img.naturalWidth > 0, img.closest('a').getAttribute('href')])""")
    assert sorted(alt for alt, _, _ in gallery) == sorted(Path(r["image"]).name for r in ok_rows)
    assert all(loaded for _, loaded, _ in gallery)
    for _, _, href in gallery:  # the full overlay each thumbnail links to exists
        assert (parquet_run / href).is_file()
    cutouts = page.evaluate("""() => Array.from(document.querySelectorAll('#concepts + p + .grid img'))
        .map(img => img.complete && img.naturalWidth > 0)""")
    assert cutouts and all(cutouts)
    # The table is the Parquet table: same rows, same values to the last bit.
    shown = _page_table(page)
    assert [{k: row[k] for k in _expected_cells(r)} for row, r in zip(shown, table)] == \
        [_expected_cells(r) for r in table]
    assert len(shown) == len(table)
    failure = page.text_content("#failure-table")
    assert "corrupt.png" in failure and "could not decode" in failure
    assert f"scene{SCENES - 1}.png: image not found" in page.text_content("#problems")
    assert page.text_content("#count-failed b") == "1" and page.text_content("#count-images b") == str(SCENES + 1)
    assert errors == []


def test_report_table_sorts_and_pages_and_loads_only_the_shown_thumbnails(parquet_run, chromium):
    write_report(parquet_run, page_rows=2, gallery_per_class=0)
    page, errors = chromium.new_page()
    page.set_viewport_size({"width": 1280, "height": 4000})
    thumbs = []
    page.on("request", lambda request: thumbs.append(Path(request.url).name) if "/t" in request.url else None)
    page.goto((parquet_run / REPORT_NAME).as_uri())
    page.wait_for_load_state("load")
    visible = _visible_column(page, "image")
    assert len(visible) == 2 and "page 1 of 3" in page.text_content("#page")
    data = json.loads((parquet_run / FILES_NAME / "report.json").read_text())
    shown_rows = [k for k, r in enumerate(data["rows"]) if r["image"] in visible]
    loaded = {name for name in thumbs if name.endswith(".jpg")}
    assert loaded <= {f"t{k}.jpg" for k in shown_rows}  # rows on other pages fetch nothing

    page.click("th[data-key=probability] button")
    probabilities = []
    for p in range(3):
        probabilities += _visible_column(page, "probability")
        if p < 2:
            page.click("#next")
    assert page.is_disabled("#next") and "page 3 of 3" in page.text_content("#page")
    numbers = [float(p) for p in probabilities if p]
    assert numbers == sorted(numbers) and probabilities[-1] == ""  # ascending, the failed row (no value) last
    page.click("th[data-key=probability] button")  # again: descending
    first = [float(p) for p in _visible_column(page, "probability")]
    assert first[0] == max(numbers)
    assert page.get_attribute("th[data-key=probability]", "aria-sort") == "descending"
    assert errors == []


# ---------------------------------------------------------------------- without a browser
def test_a_missing_image_is_drawn_on_grey_and_named(parquet_run):
    run = read_run(parquet_run)
    missing = next(r for r in run.rows if r.image.endswith(f"scene{SCENES - 1}.png"))
    expl = missing.explanation()
    assert missing.image_problem and "image not found" in missing.image_problem
    assert expl.crop.shape[:2] == expl.masks.shape[1:] and (expl.crop == expl.crop.flat[0]).all()
    present = next(r for r in run.rows if r.image.endswith("scene0.png"))
    crop = present.explanation().crop
    assert present.image_problem is None and crop.std() > 10  # the real image, cropped as in the run


def test_report_of_explanation_folders(tmp_path, capsys):
    _scenes(tmp_path / "images", 2)
    out = tmp_path / "folders"
    _explain(tmp_path / "images", out, "--target", "0", "--target", "2")  # two targets: two rows per image
    (out / "broken").mkdir()
    (out / "broken" / "explanation.json").write_text("{half")
    assert main(["report", str(out), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    data = json.loads((out / FILES_NAME / "report.json").read_text())
    rows = data["rows"]
    assert [r["status"] for r in rows] == ["failed", "ok", "ok", "ok", "ok"]
    assert "unreadable explanation.json" in rows[0]["note"]
    saved = json.loads((out / "scene0" / "explanation.json").read_text())
    second = next(r for r in rows if r["image"].endswith("scene0.png") and r["class"] == saved["labels"][1])
    values = saved["values"][1]
    assert second["top_value"] == max(values) and second["top_concept"] == values.index(max(values))
    assert second["ties"] is None  # ties are estimated for the first target only
    html = (out / REPORT_NAME).read_text()
    assert "http://" not in html and "https://" not in html  # no CDN, nothing fetched from the network
    first = sorted(p.name for p in (out / FILES_NAME).iterdir())
    (out / FILES_NAME / "stale.png").write_bytes(b"from an older report")
    assert main(["report", str(out), "--no-progress"]) == 0  # a second report replaces the first whole
    assert sorted(p.name for p in (out / FILES_NAME).iterdir()) == first
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_report_errors_are_one_line(tmp_path, capsys):
    from eac.engine.explanation import Explanation

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :4], masks[1, 4:] = True, True
    Explanation(values=[0.2, -0.1], masks=masks, targets=[0], probabilities=[0.7], method="loo", value_type="other",
                crop=np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "one")
    (tmp_path / FILES_NAME).mkdir()
    (tmp_path / FILES_NAME / "keep.txt").write_text("mine")
    assert main(["report", str(tmp_path), "--no-progress"]) == 2  # never replaces a folder it did not write
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("eac: error: ") for line in err)
    assert "no such folder" in err[0] and "explanation folders" in err[1] and "not a report" in err[2]
    assert (tmp_path / FILES_NAME / "keep.txt").read_text() == "mine"


def test_numbers_in_the_table_are_exact():
    from eac.engine.report.page import exact, shown

    value = 0.1 + 0.2
    assert float(exact(value)) == value and exact(None) == "" and exact(math.nan) == ""
    assert shown(0.30000000000000004, signed=True) == "+0.3" and shown(None) == ""


def test_captions_name_images_by_their_shortest_unique_path():
    from eac.engine.report.build import short_names

    assert short_names(["a/s1.png", "b/s1.png", "a/s2.png"]) == {
        "a/s1.png": "a/s1.png", "b/s1.png": "b/s1.png", "a/s2.png": "s2.png"}
    assert short_names(["/x/a/s1.png", "/y/a/s1.png"]) == {"/x/a/s1.png": "x/a/s1.png", "/y/a/s1.png": "y/a/s1.png"}
    assert short_names(["s1.png", "a/s1.png"]) == {"s1.png": "s1.png", "a/s1.png": "a/s1.png"}
    assert short_names(["s1.png", "s1.png"]) == {"s1.png": "s1.png"}  # two rows (targets) of one image


def test_a_run_over_two_folders_with_the_same_names_is_captioned_apart(tmp_path):
    # captions said "scene0.png" for both folders' scene0.png: the gallery read as duplicates
    for name in ("day1", "day2"):
        _scenes(tmp_path / name, 1)
    out = tmp_path / "run"
    assert main(["explain", str(tmp_path / "day1"), str(tmp_path / "day2"), "--classifier",
                 str(demo_classifier_path()), "--concepts", "grid", "--n-segments", SEGMENTS, "--out", str(out),
                 "--format", "parquet", "--no-progress"]) == 0
    assert main(["report", str(out), "--no-progress"]) == 0
    html = (out / REPORT_NAME).read_text()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    assert captions and all(("day1/scene0.png" in c) != ("day2/scene0.png" in c) for c in captions), captions
