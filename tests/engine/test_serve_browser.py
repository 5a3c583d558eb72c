"""The web page at ``/`` in a real headless Chromium (tests/browser.py): upload, overlay, ranked bars, hover.

Uploads a generated scene, waits for the result, and checks what the page shows
against the service's JSON: the ranking of the bars, the tie marks, the 95 %
intervals, the evaluations; hovering a bar paints exactly that concept's mask on
the crop. The page must log no errors. A screenshot is kept under the test's
folder (and copied to ``$EAC_TEST_ARTEFACTS`` when set).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="eac serve needs the serve extra")
pytest.importorskip("uvicorn", reason="eac serve needs the serve extra")

from eac.kernels.rle import decode_masks

from ..serve_helpers import EVALUATIONS, request, running, scene_png, wait_ready

#: The page paints a hovered concept's pixels with red ≥ 0.6·255 and dims the others to ≤ 0.45·255.
HIGHLIGHT_RED_MIN = 128
RESULT_TIMEOUT_MS = 120_000


def keep_artefact(path: Path) -> None:
    folder = os.environ.get("EAC_TEST_ARTEFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def shown_ranking(page) -> list[int]:
    return page.eval_on_selector_all(".bar-row", "rows => rows.map(r => Number(r.dataset.concept))")


def test_page_uploads_a_scene_and_shows_the_ranking_of_the_json(chromium, tmp_path):
    png = scene_png(21)
    with running() as srv:
        wait_ready(srv.url)
        page, errors = chromium.new_page()
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.goto(f"{srv.url}/")
        assert "eac" in page.title()
        assert "kernelshap" in page.eval_on_selector_all("#method option", "o => o.map(x => x.value)")
        page.set_input_files("#file", files=[{"name": "scene.png", "mimeType": "image/png", "buffer": png}])
        page.fill("#evaluations", str(EVALUATIONS))
        page.fill("#seed", "2")
        page.click("#go")
        page.wait_for_selector("body[data-result-id]", timeout=RESULT_TIMEOUT_MS)
        result_id = page.get_attribute("body", "data-result-id")
        body = request("GET", f"{srv.url}/v1/explanations/{result_id}").json()

        assert shown_ranking(page) == body["ranking"]
        tied = {i for group in body["ties"] for i in group}
        marked = page.eval_on_selector_all(".bar-row", "rows => rows.filter(r => r.querySelector('.tie'))"
                                                       ".map(r => Number(r.dataset.concept))")
        assert set(marked) == tied
        with_interval = page.eval_on_selector_all(".bar-row", "rows => rows.filter(r => r.querySelector('.ci'))"
                                                              ".map(r => Number(r.dataset.concept))")
        assert set(with_interval) == {i for i, se in enumerate(body["stderr"]) if se is not None}
        facts = dict(page.eval_on_selector_all("#facts tr", "rows => rows.map(r => [r.cells[0].textContent, "
                                                            "r.cells[1].textContent])"))
        assert facts["classifier evaluations"] == str(body["num_evaluations"])
        assert facts["time: evaluations"].endswith(" s") and facts["result id"] == result_id
        assert page.eval_on_selector("#overlay", "img => img.complete && img.naturalWidth") > 0

        top = body["ranking"][0]
        page.hover(".bar-row >> nth=0")
        assert page.get_attribute("#crop", "data-highlight") == str(top)
        pixels = np.array(page.evaluate(
            "() => { const c = document.getElementById('crop');"
            " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"), np.uint8)
        mask = decode_masks(body["masks_rle"])[top]
        painted = pixels.reshape(*mask.shape, 4)[..., 0] >= HIGHLIGHT_RED_MIN
        np.testing.assert_array_equal(painted, mask)

        shot = tmp_path / "serve-page.png"
        page.screenshot(path=str(shot), full_page=True)
        keep_artefact(shot)

        # Dropping a file works like choosing one.
        transfer = page.evaluate_handle(
            "bytes => { const t = new DataTransfer();"
            " t.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'})); return t; }",
            list(scene_png(22)))
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
        assert "dropped.png" in page.text_content("#chosen")
        page.click("#go")
        page.wait_for_function("(old) => document.body.dataset.resultId !== old", arg=result_id,
                               timeout=RESULT_TIMEOUT_MS)
        assert errors == []
