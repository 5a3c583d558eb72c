"""Explanation.save / load: exact round trip, strict JSON, atomic folders, the picture files (their
content is tested in test_render.py)."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from eac.engine import explanation as explanation_module
from eac.engine.errors import ExplainError
from eac.engine.explainer import explain
from eac.engine.explanation import JSON_NAME, MASKS_NAME, Explanation, check_output_folder
from eac.engine.render import files as render_files
from eac.engine.render.cutout import MIN_CUTOUT_SIDE
from eac.engine.render.files import CUTOUT_PATTERN
from eac.engine.render.layout import MARGIN, display_size
from eac.engine.render.overlay import render_overlay

from tests.explainer_fakes import FakeClassifier, grid_masks, random_image

#: Rounds of the two-writer race.
RACE_ROUNDS = 20
#: Seconds a race round may wait for its writers before the test fails.
RACE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def expl():
    clf = FakeClassifier(seed=1, scale=3.0)
    return explain(
        random_image(seed=2), clf, grid_masks(rows=4, cols=5), method="eac", target=[1, "class3"]
    )


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _strict_load(path):
    """Parse a JSON file the way a strict parser would (NaN / Infinity rejected)."""
    return json.loads(path.read_text(), parse_constant=_reject_constant)


def _made_up(values, masks=None, stderr=None, crop_value=None, **kwargs):
    """An Explanation with the given values over vertical-stripe concepts on a 32×32 crop."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    masks = grid_masks(rows=1, cols=n) if masks is None else masks
    crop = (
        random_image(seed=4) if crop_value is None else np.full((32, 32, 3), crop_value, np.uint8)
    )
    return Explanation(
        values=values,
        masks=masks,
        targets=[0],
        probabilities=[0.9],
        method="loo",
        value_type="other",
        stderr=stderr,
        crop=crop,
        **kwargs,
    )


def _hidden_siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------- round trip
def test_round_trip_is_exact(expl, tmp_path):
    path = expl.save(tmp_path / "out", top_k=3)
    assert path.name == "explanation.json"
    back = Explanation.load(tmp_path / "out")
    np.testing.assert_array_equal(back.values, expl.values)  # bit-exact, not approximately
    np.testing.assert_array_equal(back.stderr, expl.stderr)
    np.testing.assert_array_equal(back.masks, expl.masks)
    np.testing.assert_array_equal(back.crop, expl.crop)
    np.testing.assert_array_equal(back.ranking, expl.ranking)
    assert back.targets == [1, 3] and back.labels == ["class1", "class3"]
    assert back.probabilities == expl.probabilities and back.timings == expl.timings
    assert back.method == "eac" and back.value_type == "shapley"
    assert back.num_evaluations == expl.num_evaluations and back.provider == "FakeProvider"
    assert back.settings == json.loads(json.dumps(expl.settings))
    assert back.frame == expl.frame and back.frame is not None
    assert back.ties == expl.ties
    again = Explanation.load(path)  # the JSON file itself works too
    np.testing.assert_array_equal(again.values, expl.values)


def test_files_overlay_and_cutouts(expl, tmp_path):
    expl.save(tmp_path, top_k=3)
    data = json.loads((tmp_path / "explanation.json").read_text())
    assert set(data["timings"]) >= {"concepts", "evaluations", "fit", "values"}
    assert data["ranking"][0][0] == int(np.argmax(expl.values[0]))
    overlay = cv2.imread(str(tmp_path / "overlay.png"))
    assert overlay.shape[0] > overlay.shape[1] > 0  # two targets: two panels, one above the other
    assert (tmp_path / "heatmap.png").is_file() and (tmp_path / "values.png").is_file()
    assert not (tmp_path / "overlay_target1.png").exists()  # every target is a panel of overlay.png
    # The best concept is tinted red: its region differs from the plain enlarged crop.
    h, w = display_size(expl.crop.shape[:2])
    plain = cv2.resize(cv2.cvtColor(expl.crop, cv2.COLOR_RGB2BGR), (w, h), interpolation=cv2.INTER_NEAREST)
    best = cv2.resize(expl.masks[expl.top(1)[0]].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    shown = overlay[MARGIN : MARGIN + h, MARGIN : MARGIN + w].astype(int)
    assert np.abs(shown - plain.astype(int))[best].mean() > 10
    for rank in (1, 2, 3):
        index = expl.top(3)[rank - 1]
        cut = cv2.imread(str(tmp_path / f"top{rank}_concept{index}.png"), cv2.IMREAD_UNCHANGED)
        mask = expl.masks[index]
        ys, xs = np.nonzero(mask)
        h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
        k = math.ceil(MIN_CUTOUT_SIDE / max(h, w))
        assert cut.shape == (h * k, w * k, 4)
        assert (cut[:, :, 3] == 255).sum() == mask.sum() * k * k
    assert not (tmp_path / "concept_4.png").exists()


def test_single_target_and_zero_concepts(tmp_path):
    clf = FakeClassifier(seed=1)
    crop = random_image(seed=3)
    one = explain(crop, clf, grid_masks(rows=1, cols=2), method="loo")
    one.save(tmp_path / "one")
    back = Explanation.load(tmp_path / "one")
    assert back.values.shape == (2,) and back.stderr is None and back.target == one.target
    none = explain(crop, clf, np.zeros((0, 32, 32), bool), method="eac")
    none.save(tmp_path / "none")
    back = Explanation.load(tmp_path / "none")
    assert back.values.shape == (0,) and back.masks.shape == (0, 32, 32)
    assert (tmp_path / "none" / "overlay.png").is_file()


def test_load_errors(tmp_path):
    with pytest.raises(ExplainError, match=r"explanation\.json"):
        Explanation.load(tmp_path)
    (tmp_path / "explanation.json").write_text("{not json")
    with pytest.raises(ExplainError, match="readable"):
        Explanation.load(tmp_path)


def test_negative_top_k_is_refused(tmp_path):
    e = _made_up([0.1, 0.2, 0.3])
    with pytest.raises(ExplainError, match="top_k"):
        e.save(tmp_path / "out", top_k=-1)
    with pytest.raises(ExplainError, match="top_k"):
        e.top(-2)
    assert list(tmp_path.iterdir()) == []
    e.save(tmp_path / "out", top_k=0)  # no cut-outs, an overlay without concepts drawn
    assert not list((tmp_path / "out").glob("top*_concept*.png"))


def test_bad_value_type_and_shape():
    with pytest.raises(ExplainError, match="value_type"):
        Explanation(np.zeros(2), np.zeros((2, 4, 4), bool), [0], [0.5], "eac", "exact")
    with pytest.raises(ExplainError, match="concepts"):
        Explanation(np.zeros(3), np.zeros((2, 4, 4), bool), [0], [0.5], "eac", "shapley")


# ---------------------------------------------------------------------- strict JSON
def test_json_is_strict_and_nulls_read_back_as_nan(tmp_path):
    e = _made_up(
        [0.5, math.nan, -math.inf],
        stderr=[0.01, math.inf, math.nan],
        info={
            "metrics": {"insertion_auc": math.nan, "deletion_auc": np.float32(12.5)},
            "arr": np.array([1.0, math.inf]),
            3: "int key",
        },
    )
    e.timings["fit"] = math.nan
    e.probabilities = [math.nan]
    json.dumps(e.to_dict(), allow_nan=False)  # to_dict is strict-JSON-safe as it is
    e.save(tmp_path / "out")
    data = _strict_load(tmp_path / "out" / JSON_NAME)
    assert data["values"] == [0.5, None, None] and data["stderr"] == [0.01, None, None]
    assert data["info"]["metrics"] == {"insertion_auc": None, "deletion_auc": 12.5}
    assert data["info"]["arr"] == [1.0, None] and data["info"]["3"] == "int key"
    assert data["timings"]["fit"] is None and data["probabilities"] == [None]
    back = Explanation.load(tmp_path / "out")
    assert back.values[0] == 0.5 and np.isnan(back.values[1:]).all()
    assert back.stderr[0] == 0.01 and np.isnan(back.stderr[1:]).all()
    assert math.isnan(back.timings["fit"]) and math.isnan(back.probability)
    assert (tmp_path / "out" / "overlay.png").is_file()  # NaN values draw, they do not crash


def test_zero_concepts_json_is_strict(tmp_path):
    clf = FakeClassifier(seed=1)
    for target in (None, [0, 2]):
        none = explain(
            random_image(seed=3), clf, np.zeros((0, 32, 32), bool), method="eac", target=target
        )
        none.info["metrics"] = {"insertion_auc": math.nan, "deletion_auc": math.nan}
        folder = tmp_path / f"none{0 if target is None else len(target)}"
        none.save(folder)
        data = _strict_load(folder / JSON_NAME)
        assert data["num_concepts"] == 0 and data["info"]["metrics"]["insertion_auc"] is None
        back = Explanation.load(folder)
        assert back.values.shape == none.values.shape and back.num_concepts == 0


# ---------------------------------------------------------------------- atomic folders
def test_resave_replaces_the_folder_whole(expl, tmp_path):
    out = tmp_path / "out"
    expl.save(out, top_k=7)  # two targets, seven cut-outs
    assert len(list(out.glob("top7_concept*.png"))) == 1
    small = _made_up([0.2, -0.1])  # concept 0 ranks first
    small.save(out, top_k=7)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [JSON_NAME, MASKS_NAME, "crop.png", "overlay.png", "heatmap.png", "values.png", "top1_concept0.png",
         "top2_concept1.png"]
    )
    assert Explanation.load(out).num_concepts == 2
    assert _hidden_siblings(out) == []  # no temporary or set-aside folders left


def test_masks_from_another_save_are_detected(tmp_path):
    _made_up([0.1, 0.2]).save(tmp_path / "a")
    _made_up([0.3, 0.4]).save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / MASKS_NAME, tmp_path / "a" / MASKS_NAME)
    with pytest.raises(ExplainError, match="different saves"):
        Explanation.load(tmp_path / "a")


def _race_worker(dest, n, barrier, rounds):
    """Save an explanation with ``n`` concepts to ``dest`` once per round, all writers at once."""
    rng = np.random.default_rng(n)
    e = _made_up(rng.normal(size=n), masks=grid_masks(rows=1, cols=n))
    try:
        for _ in range(rounds):
            barrier.wait(RACE_TIMEOUT_S)
            e.save(dest, top_k=n)
            barrier.wait(RACE_TIMEOUT_S)
    except BaseException:
        barrier.abort()  # the test fails at once instead of waiting for the timeout
        raise


def _assert_consistent(folder):
    data = _strict_load(folder / JSON_NAME)
    with np.load(folder / MASKS_NAME) as z:
        assert str(z["save_id"]) == data["save_id"]
        assert int(z["shape"][0]) == data["num_concepts"]
    n = data["num_concepts"]
    cutouts = sorted(p.name for p in folder.iterdir() if p.name.startswith("top"))
    ranked = data["ranking"][0] if data["ranking"] and isinstance(data["ranking"][0], list) else data["ranking"]
    ranked = ranked[:n]  # the first target's (one target: a flat list)
    assert cutouts == sorted(CUTOUT_PATTERN.format(rank=r, index=i) for r, i in enumerate(ranked, start=1))
    assert Explanation.load(folder).num_concepts == n


def test_two_processes_saving_to_one_folder_never_mix(tmp_path):
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    dest = tmp_path / "out"
    barrier = ctx.Barrier(3)
    workers = [
        ctx.Process(target=_race_worker, args=(dest, n, barrier, RACE_ROUNDS)) for n in (3, 6)
    ]
    for w in workers:
        w.start()
    seen = set()
    try:
        for _ in range(RACE_ROUNDS):
            barrier.wait(RACE_TIMEOUT_S)  # both writers save now
            barrier.wait(RACE_TIMEOUT_S)  # both are done
            _assert_consistent(dest)
            seen.add(json.loads((dest / JSON_NAME).read_text())["num_concepts"])
            assert _hidden_siblings(dest) == []
    except BaseException:
        barrier.abort()  # release the writers at once
        raise
    finally:
        for w in workers:
            w.join(RACE_TIMEOUT_S)
            if w.is_alive():
                w.terminate()
    assert all(w.exitcode == 0 for w in workers)
    assert seen <= {3, 6}


def test_failed_save_leaves_the_old_result_and_no_temporary_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _made_up([0.1, 0.2, 0.3]).save(out)
    before = sorted(p.name for p in out.iterdir())

    def broken(*args, **kwargs):
        raise ExplainError("drawing failed")

    monkeypatch.setattr(render_files, "render_overlay", broken)
    with pytest.raises(ExplainError, match="drawing failed"):
        _made_up([0.5, 0.6]).save(out)
    with pytest.raises(ExplainError, match="drawing failed"):
        _made_up([0.5, 0.6]).save(tmp_path / "new")
    assert (
        sorted(p.name for p in out.iterdir()) == before and Explanation.load(out).num_concepts == 3
    )
    assert not (tmp_path / "new").exists()
    assert _hidden_siblings(out) == []


def test_stale_temporary_folder_is_harmless(tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / ".out.tmp-99999-0123456789ab"  # what a killed save leaves
    stale.mkdir()
    (stale / MASKS_NAME).write_bytes(b"half written")
    _made_up([0.1, 0.2]).save(out)
    assert Explanation.load(out).num_concepts == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [stale.name, "out"]


def test_bad_destinations_are_one_line_errors(tmp_path):
    e = _made_up([0.1, 0.2])
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = {afile: "is a file", afile / "sub" / "out": "is a file"}
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"keep me")
    cases[foreign] = "not an explanation"
    for dest, message in cases.items():
        for call in (lambda d=dest: check_output_folder(d), lambda d=dest: e.save(d)):
            with pytest.raises(ExplainError, match=message) as info:
                call()
            assert len(str(info.value).splitlines()) == 1
    assert afile.read_text() == "x" and (foreign / "holiday.jpg").read_bytes() == b"keep me"
    assert check_output_folder(foreign, replace=False) == foreign  # writing *into* it is fine
    fresh = tmp_path / "a" / "b" / "c"
    assert (
        check_output_folder(fresh) == fresh and not (tmp_path / "a").exists()
    )  # checks, writes nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output_folder(empty) == empty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "photos"]


def test_unwritable_destination_is_a_one_line_error(tmp_path):
    # The check creates (and removes) a probe entry: the mode bits alone say yes to root, while a
    # read-only or pseudo filesystem still refuses (with os.access, `--out /proc/x` passed the check
    # as root and failed only after the work).
    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        if not Path("/proc/self").is_dir():
            pytest.skip("root here, and no /proc to stand for a folder nothing can be created in")
        locked = Path("/proc")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
    try:
        with pytest.raises(ExplainError, match="nothing can be created in") as info:
            check_output_folder(locked / "out")
        assert len(str(info.value).splitlines()) == 1
        with pytest.raises(ExplainError, match="nothing can be created in"):
            _made_up([0.1]).save(locked / "out")
    finally:
        if locked != Path("/proc"):
            locked.chmod(0o700)
            assert list(locked.iterdir()) == []


def test_the_writability_probe_leaves_nothing_behind(tmp_path):
    check_output_folder(tmp_path / "a" / "b")
    check_output_folder(tmp_path, replace=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- ties
def test_ties_are_normalised_saved_and_drawn(tmp_path):
    e = _made_up([0.5, 0.41, 0.4, 0.1], ties=[[2, 1], [3], [0, 0]])
    assert e.ties == [[1, 2]]  # sorted, groups of fewer than two dropped
    e.save(tmp_path / "t")
    assert _strict_load(tmp_path / "t" / JSON_NAME)["ties"] == [[1, 2]]
    assert Explanation.load(tmp_path / "t").ties == [[1, 2]]
    untied = _made_up([0.5, 0.41, 0.4, 0.1])
    assert untied.to_dict()["ties"] is None
    tied_overlay, plain_overlay = render_overlay(e), render_overlay(untied)
    assert (
        tied_overlay.shape[0] > plain_overlay.shape[0]
        or tied_overlay.shape[1] > plain_overlay.shape[1]
        or (tied_overlay != plain_overlay).any()
    )
    with pytest.raises(ExplainError, match="ties"):
        _made_up([0.1, 0.2], ties=[[0, 5]])


# ---------------------------------------------------------------------- names that moved
def test_picture_names_that_moved_to_render_still_resolve_here():
    from eac.engine import render

    assert explanation_module.render_overlay is render.render_overlay
    assert explanation_module.cutout is render.cutout and explanation_module.format_value is render.format_value
    assert explanation_module.value_colour is render.value_colour
    assert explanation_module.CUTOUT_PATTERN == CUTOUT_PATTERN
    with pytest.raises(AttributeError):
        explanation_module.no_such_name  # noqa: B018 - the access is the test
