"""The README's pictures, made by the commands the README shows.

``python -m eac.bench.readme_figures --out bench/results/figures`` writes

``demo_overlay.png``, ``demo_values.png``, ``demo_heatmap.png``
    the pictures ``eac demo`` writes (it runs ``eac demo`` and reads its folder back);
``report.png``
    a screenshot of ``eac report`` over ``eac explain SCENES --format parquet`` on a few generated scenes
    with the demo classifier, taken in headless Chromium (Debian's ``chromium``, or ``$EAC_CHROMIUM``) through
    Playwright (the ``dev`` extra).

Pictures are stored as palette PNGs (256 colours, Pillow's octree) so the repository stays small. Re-run it whenever
the demo or the pictures change; it needs no network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

#: Scenes in the report's run (enough for two classes and a few cut-outs).
REPORT_SCENES = 8
SCENE_SIZE = 128
#: The screenshot: browser viewport (CSS pixels) and the stored picture's width.
VIEWPORT = {"width": 1280, "height": 1100}
SCREENSHOT_WIDTH = 1000
#: Colours of the stored palette PNGs.
PALETTE_COLOURS = 256
DEFAULT_CHROMIUM = "/usr/bin/chromium"
#: Headless, offline, as root: no sandbox, no GPU, none of Chromium's background connections.
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def save_small_png(path: Path, bgr: np.ndarray, width: int | None = None) -> int:
    """Save a BGR picture as a 256-colour PNG (optionally shrunk to ``width``); returns its bytes."""
    from PIL import Image

    if width is not None and bgr.shape[1] > width:
        height = round(bgr.shape[0] * width / bgr.shape[1])
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    # Octree keeps small areas of distinct colour (the colour bar's blue end), which median cut merges.
    image = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).quantize(PALETTE_COLOURS,
                                                                           method=Image.Quantize.FASTOCTREE)
    image.save(path, optimize=True)
    return path.stat().st_size


def demo_figures(out: Path, work: Path) -> list[Path]:
    """Run ``eac demo`` and keep its overlay, values figure and heat map."""
    from eac.engine.cli import main

    folder = work / "demo"
    if main(["demo", "--out", str(folder)]) != 0:
        raise SystemExit("eac demo failed")
    written = []
    for name in ("overlay", "values", "heatmap"):
        source = folder / f"{name}.png"
        if not source.is_file():
            raise SystemExit(f"eac demo wrote no {source.name} (values.png needs matplotlib: the plot extra)")
        target = out / f"demo_{name}.png"
        save_small_png(target, cv2.imread(str(source)))
        written.append(target)
    return written


def report_figure(out: Path, work: Path) -> Path:
    """Explain a few scenes into a Parquet table, run ``eac report`` and screenshot the page."""
    from eac.engine.cli import main
    from eac.engine.demo import demo_classifier_path
    from eac.engine.scenes import make_scene

    cwd = Path.cwd()
    os.chdir(work)  # relative paths, as a user would type them: the page shows "scenes/scene0.png", not /tmp/...
    try:
        images = Path("scenes")
        images.mkdir()
        for seed in range(REPORT_SCENES):
            scene = make_scene(np.random.default_rng(seed), SCENE_SIZE)
            cv2.imwrite(str(images / f"scene{seed}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        (images / "truncated.png").write_bytes(b"\x89PNG\r\n")  # one failure, so the report shows one
        main(["explain", str(images), "--classifier", str(demo_classifier_path()), "--out", "audit", "--format",
              "parquet", "--no-progress"])
        if main(["report", "audit", "--no-progress"]) != 0:
            raise SystemExit("eac report failed")
    finally:
        os.chdir(cwd)
    run = work / "audit"
    shot = work / "report.png"
    _screenshot((run / "report.html").as_uri(), shot)
    target = out / "report.png"
    save_small_png(target, cv2.imread(str(shot)), SCREENSHOT_WIDTH)
    return target


def _screenshot(url: str, path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise SystemExit("the report screenshot needs playwright (the dev extra)") from exc
    chromium = os.environ.get("EAC_CHROMIUM", DEFAULT_CHROMIUM)
    if not Path(chromium).is_file():
        raise SystemExit(f"no Chromium at {chromium} (apt-get install chromium, or set EAC_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="eac-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                       args=list(CHROMIUM_FLAGS), viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.goto(url)
            page.wait_for_load_state("load")
            page.screenshot(path=str(path))
        finally:
            context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/figures", help="folder for the pictures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="eac-figures-"))
    try:
        written = [*demo_figures(out, work), report_figure(out, work)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
