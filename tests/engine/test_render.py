"""Pictures a person reads at a glance: bounded sizes, legends that do not grow with ties, colours with the
right sign, a heat map of every concept, the values figure (with and without matplotlib), one panel per target."""

from __future__ import annotations

import math
import sys

import cv2
import numpy as np
import pytest
from eac.engine.errors import ConfigError
from eac.engine.explanation import Explanation
from eac.engine.render import format_value, render_heatmap, render_overlay, render_values_figure, value_colour
from eac.engine.render.cutout import MIN_CUTOUT_SIDE, cutout
from eac.engine.render.heatmap import UNCOVERED, concept_map
from eac.engine.render.layout import IMAGE_SIDE, MARGIN, MAX_ASPECT, MAX_WIDTH, display_size, resize_nearest
from eac.engine.render.overlay import BRACKET_TICK, BRACKET_X, LEGEND_PAD, LEGEND_ROW, LEGEND_WIDTH, SWATCH, tie_runs
from eac.engine.render.scale import NEGATIVE_COLOUR, POSITIVE_COLOUR, ZERO_COLOUR, value_colours
from eac.engine.render.values import PLOT_HINT, plot_available

from tests.explainer_fakes import grid_masks, random_image

#: Modules whose absence hides matplotlib (set to None in sys.modules, so importing them fails).
MATPLOTLIB_MODULES = ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg")


def _explanation(values, masks=None, hw=(32, 32), crop_value=None, stderr=None, **kwargs):
    """An Explanation over grid concepts (or ``masks``) on an ``hw`` crop."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    if masks is None:
        rows = max(1, int(math.sqrt(n)))
        while n % rows:
            rows -= 1
        masks = grid_masks(hw=hw, rows=rows, cols=n // rows)
    crop = random_image(hw, seed=4) if crop_value is None else np.full((*hw, 3), crop_value, np.uint8)
    targets = list(range(values.shape[0])) if values.ndim == 2 else [0]
    return Explanation(values=values, masks=masks, targets=targets, probabilities=[0.9] * len(targets),
                       method="eac", value_type="shapley", stderr=stderr, crop=crop, num_evaluations=400, **kwargs)


def _bounded(picture):
    h, w = picture.shape[:2]
    return w <= MAX_WIDTH and max(w / h, h / w) <= MAX_ASPECT


def _image_part(picture, hw):
    """The (enlarged) image of the first panel."""
    h, w = display_size(hw)
    return picture[MARGIN : MARGIN + h, MARGIN : MARGIN + w]


def _legend_part(picture, hw):
    w = display_size(hw)[1]
    x = 2 * MARGIN + w
    return picture[:, x : x + LEGEND_WIDTH]


# ---------------------------------------------------------------------- sizes
@pytest.mark.parametrize("hw", [(8, 8), (32, 32), (224, 224), (1500, 1000), (40, 900), (900, 40)])
@pytest.mark.parametrize("targets", [1, 3, 7])
def test_every_picture_is_bounded_in_width_and_aspect(hw, targets):
    rng = np.random.default_rng(targets)
    values = rng.normal(size=(targets, 6)) if targets > 1 else rng.normal(size=6)
    e = _explanation(values, hw=hw)
    for render in (render_overlay, render_heatmap):
        picture = render(e)
        assert _bounded(picture), (render.__name__, picture.shape)
        assert picture.dtype == np.uint8 and picture.shape[2] == 3


@pytest.mark.parametrize("hw", [(8, 8), (2000, 1500)])
def test_tiny_and_huge_images_are_shown_at_the_same_readable_size(hw):
    e = _explanation([0.3, -0.2], hw=hw, masks=np.zeros((2, *hw), bool))  # nothing drawn over the image
    overlay = render_overlay(e)
    h, w = display_size(hw)
    assert max(h, w) == IMAGE_SIDE
    if hw[0] < h:  # enlarged: every pixel of the crop is a block of identical pixels
        expected = resize_nearest(cv2.cvtColor(e.crop, cv2.COLOR_RGB2BGR).transpose(2, 0, 1), (h, w)).transpose(1, 2, 0)
        np.testing.assert_array_equal(_image_part(overlay, hw), expected)
    else:  # shrunk by area averaging: the mean colour is kept
        shown = _image_part(overlay, hw).reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(shown, e.crop[..., ::-1].reshape(-1, 3).mean(axis=0), atol=1.0)


def test_the_demo_sized_overlay_is_no_longer_a_strip():
    """The first picture a user sees (a 224 crop, 28 concepts, most of them tied) is at most 2:1."""
    rng = np.random.default_rng(0)
    values = np.concatenate([[0.7], rng.normal(scale=0.005, size=27)])
    e = _explanation(values, hw=(224, 224), masks=grid_masks((224, 224), rows=4, cols=7),
                     stderr=np.full(28, 0.0036), ties=[list(range(1, 28))])
    overlay = render_overlay(e)
    assert _bounded(overlay) and overlay.shape[1] <= MAX_WIDTH
    assert display_size((224, 224))[0] >= overlay.shape[0] / 2  # the image is at least half the height


# ---------------------------------------------------------------------- legends and ties
def test_legend_width_does_not_grow_with_ties_or_concepts():
    rng = np.random.default_rng(1)
    shapes = set()
    for n, ties in [(6, None), (6, [[0, 1, 2, 3, 4, 5]]), (60, None), (60, [list(range(1, 60))]),
                    (60, [[2 * i, 2 * i + 1] for i in range(30)]), (240, [list(range(240))])]:
        masks = grid_masks((64, 64), rows=n // 6, cols=6)
        e = _explanation(rng.normal(size=n), masks=masks, hw=(64, 64), ties=ties,
                         stderr=np.full(n, 0.01), labels=["a class with a rather long name indeed, very long"])
        shapes.add(render_overlay(e).shape)
    assert len(shapes) == 1, shapes


def test_a_tie_group_is_one_bracket_beside_its_rows():
    values = np.array([0.5, 0.2, 0.19, 0.18, 0.17, 0.01, 0.009, 0.008])
    tied = _explanation(values, hw=(32, 32), stderr=np.full(8, 0.02), ties=[[1, 2, 3, 4, 5, 6, 7]])
    plain = _explanation(values, hw=(32, 32), stderr=np.full(8, 0.02))
    a, b = render_overlay(tied), render_overlay(plain)
    assert a.shape == b.shape
    ys, xs = np.nonzero((a != b).any(axis=-1))
    legend_x = 2 * MARGIN + display_size((32, 32))[1]
    bracket_x = legend_x + BRACKET_X - BRACKET_TICK - 1  # its lines are 2 px wide
    last_swatch = np.all(a[:, legend_x:] == np.array(value_colour(values[4], 0.5), np.uint8), axis=-1)
    rows_end = np.nonzero(last_swatch.any(axis=1))[0].max() + (LEGEND_ROW - SWATCH) // 2
    in_rows = ys <= rows_end
    assert (xs[in_rows] >= bracket_x).all()  # beside the rows only the bracket is new: names, values unchanged
    assert in_rows.sum() > 100  # and it is there


def test_tie_runs_name_the_rows_and_count_the_rest():
    assert tie_runs(None, [3, 1, 2]) == []
    assert tie_runs([[1, 2, 7, 9]], [3, 1, 2]) == [(1, 2, 2)]  # rows 1-2 of the legend, 2 members not shown
    assert tie_runs([[3, 2], [5, 6]], [3, 1, 2]) == [(0, 0, 0), (2, 2, 0)]  # not adjacent: two brackets
    assert tie_runs([[0, 4, 5, 6, 7, 8]], [0, 1, 2]) == [(0, 0, 5)]


@pytest.mark.parametrize("top_k", [5, 12])
def test_legend_lists_every_shown_concept(top_k):
    n = 12
    values = np.linspace(0.6, -0.5, n)  # distinct colours, positive and negative
    e = _explanation(values, masks=grid_masks(rows=3, cols=4))
    legend = _legend_part(render_overlay(e, top_k=top_k), (32, 32))
    scale = np.abs(values).max()
    for i in range(top_k):
        hits = np.all(legend == np.array(value_colour(values[i], scale), np.uint8), axis=-1)
        assert hits.sum() >= (SWATCH - 1) ** 2, f"row #{i + 1} is missing"
    assert not (legend[-LEGEND_PAD:] != 255).any()  # nothing drawn into the bottom margin: rows all fit


# ---------------------------------------------------------------------- colours
def _mean_bgr(picture, hw, mask):
    h, w = display_size(hw)
    big = resize_nearest(mask, (h, w))
    inner = cv2.erode(big.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)  # away from outlines, numbers
    return _image_part(picture, hw)[inner].astype(float).mean(axis=0)


def test_positive_values_are_red_and_negative_values_blue_in_overlay_and_heatmap():
    values = np.array([0.5, -0.5, 0.1, -0.1])
    e = _explanation(values, masks=grid_masks(rows=2, cols=2), crop_value=128)
    for render in (render_overlay, render_heatmap):
        picture = render(e)
        b, _, r = np.array([_mean_bgr(picture, (32, 32), e.masks[i]) for i in range(4)]).T
        assert r[0] - b[0] > 60 and r[2] > b[2], render.__name__  # positive: red side
        assert b[1] - r[1] > 60 and b[3] > r[3], render.__name__  # negative: blue side
        assert (r[0] - b[0]) > (r[2] - b[2]) and (b[1] - r[1]) > (b[3] - r[3])  # stronger value, stronger colour


def test_negative_top_concept_is_drawn_strongly_blue():
    # Every value is negative, so #1 is the least negative; it is still clearly blue, not pale.
    e = _explanation([-0.3, -0.35, -0.4], masks=grid_masks(rows=1, cols=3), crop_value=128)
    b, g, r = _mean_bgr(render_overlay(e, top_k=3), (32, 32), e.masks[0])
    assert b - r > 80 and b > g


def test_colour_scale_is_diverging_and_symmetric():
    assert value_colour(1.0, 1.0) == POSITIVE_COLOUR and value_colour(-1.0, 1.0) == NEGATIVE_COLOUR
    assert value_colour(0.0, 1.0) == ZERO_COLOUR and value_colour(5.0, 1.0) == POSITIVE_COLOUR
    half_pos, half_neg = np.array(value_colour(0.5, 1.0)), np.array(value_colour(-0.5, 1.0))
    white = np.array(ZERO_COLOUR)
    assert np.abs(white - half_pos).sum() == pytest.approx(np.abs(white - np.array(POSITIVE_COLOUR)).sum() / 2, abs=3)
    assert np.abs(white - half_neg).sum() == pytest.approx(np.abs(white - np.array(NEGATIVE_COLOUR)).sum() / 2, abs=3)
    assert value_colour(math.nan, 1.0) != ZERO_COLOUR
    many = value_colours(np.array([0.25, -0.75, math.nan]), 1.0)
    assert [tuple(int(c) for c in row) for row in many] == [value_colour(v, 1.0) for v in (0.25, -0.75, math.nan)]


# ---------------------------------------------------------------------- heat map
def test_heatmap_paints_every_concept_not_only_the_top_k():
    n = 24
    values = np.linspace(0.4, -0.3, n)
    values[values == 0] = 0.01
    masks = grid_masks((48, 48), rows=4, cols=6)
    e = _explanation(values, masks=masks, hw=(48, 48), crop_value=128)
    heat = render_heatmap(e)
    scale = np.abs(values).max()
    for i in range(n):
        b, g, r = _mean_bgr(heat, (48, 48), masks[i])
        expected = np.array(value_colour(values[i], scale), float)
        assert np.sign(r - b) == np.sign(values[i]), f"concept {i} has the wrong hue"
        # The colour shows through: closer to this concept's colour than the grey below is.
        assert np.abs(np.array([b, g, r]) - expected).sum() < np.abs(128 - expected).sum(), f"concept {i}"


def test_heatmap_shows_the_smaller_of_two_overlapping_concepts_and_leaves_the_rest_grey():
    masks = np.zeros((2, 32, 32), bool)
    masks[0, :, :16] = True  # half the image
    masks[1, 4:12, 4:12] = True  # inside it
    index = concept_map(masks)
    assert (index[4:12, 4:12] == 1).all() and (index[:, 12:16] == 0).all() and (index[:, 16:] == UNCOVERED).all()
    e = _explanation([0.5, -0.5], masks=masks, crop_value=128)
    heat = render_heatmap(e)
    assert _mean_bgr(heat, (32, 32), masks[1])[0] > 180  # blue: the small negative concept is visible
    uncovered = np.zeros((32, 32), bool)
    uncovered[:, 20:] = True
    b, g, r = _mean_bgr(heat, (32, 32), uncovered)
    assert abs(b - r) < 2 and abs(g - r) < 2  # grey


# ---------------------------------------------------------------------- one panel per target
def test_each_target_gets_its_own_panel():
    values = np.array([[0.5, -0.2, 0.1, 0.0], [-0.4, 0.3, 0.0, 0.2], [0.1, 0.1, -0.6, 0.05]])
    e = _explanation(values, masks=grid_masks(rows=2, cols=2))
    together = render_overlay(e)
    panels = [render_overlay(e, target_index=t) for t in range(3)]
    assert all(p.shape == panels[0].shape for p in panels)
    h = panels[0].shape[0]
    assert together.shape[0] == 3 * h  # one above the other, unscaled
    for t, panel in enumerate(panels):
        np.testing.assert_array_equal(together[t * h : (t + 1) * h, : panel.shape[1]], panel)
    assert not np.array_equal(panels[0], panels[1])
    heat = render_heatmap(e)
    assert _bounded(heat) and heat.shape[0] > render_heatmap(e, target_index=0).shape[0]


# ---------------------------------------------------------------------- values figure
@pytest.mark.skipif(not plot_available(), reason="matplotlib (plot extra) not installed")
def test_values_figure_has_bars_of_both_signs_and_is_bounded(tmp_path):
    values = np.array([0.5, 0.2, -0.5, 0.01, -0.02, 0.005] * 2)
    e = _explanation(values, hw=(32, 32), stderr=np.full(12, 0.01), ties=[[3, 4, 5, 9]])
    picture = render_values_figure(e)
    assert _bounded(picture)
    b, _, r = (picture[..., c].astype(int) for c in range(3))
    reds = (r - b > 150).sum()
    blues = (b - r > 150).sum()
    assert reds > 1000 and blues > 1000  # the largest bars on each side, in the overlay's colours
    multi = render_values_figure(_explanation(np.tile(values[:6], (5, 1))))
    assert _bounded(multi)
    e.save(tmp_path / "out")
    assert (tmp_path / "out" / "values.png").is_file()


def test_without_matplotlib_values_png_is_skipped_and_the_cli_says_what_the_extra_adds(tmp_path, monkeypatch,
                                                                                       capsys):
    for name in MATPLOTLIB_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    assert not plot_available()
    e = _explanation([0.3, -0.1, 0.2, 0.05])
    with pytest.raises(ConfigError, match=r"pip install '\.\[plot\]'"):
        render_values_figure(e)
    e.save(tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "values.png" not in names and {"overlay.png", "heatmap.png"} <= set(names)
    from eac.engine.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out, err = capsys.readouterr()
    notes = [line for line in (out + err).splitlines() if "values.png" in line]
    assert notes == [f"eac: note: {PLOT_HINT}"]  # one line, and "wrote ..." does not claim a values.png
    assert not (tmp_path / "demo" / "values.png").exists() and (tmp_path / "demo" / "heatmap.png").is_file()


# ---------------------------------------------------------------------- text and cut-outs
def test_values_are_printed_with_significant_digits():
    assert format_value(-3.14159e-5) == "-3.14e-05"
    assert format_value(0.41234, 0.01349) == "+0.412 ± 0.013"
    assert format_value(0.0, None) == "+0"
    assert format_value(math.nan) == "n/a" and format_value(0.5, math.nan) == "+0.5"
    assert "0.0000" not in format_value(-1e-7)


def test_cutouts_are_scaled_up_to_a_readable_size():
    crop = random_image(seed=5)
    mask = np.zeros((32, 32), bool)
    mask[3:6, 10:12] = True  # 3×2 pixels
    cut = cutout(crop, mask)
    k = math.ceil(MIN_CUTOUT_SIDE / 3)
    assert cut.shape == (3 * k, 2 * k, 4) and max(cut.shape[:2]) >= MIN_CUTOUT_SIDE
    assert (cut[:, :, 3] == 255).sum() == mask.sum() * k * k
    bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
    np.testing.assert_array_equal(cut[0, 0, :3], bgr[3, 10])  # nearest neighbour: pixels kept as they are
    big = np.ones((200, 150), bool)
    assert cutout(np.zeros((200, 150, 3), np.uint8), big).shape == (200, 150, 4)  # large enough already
    assert cutout(crop, np.zeros((32, 32), bool)).shape == (1, 1, 4)
