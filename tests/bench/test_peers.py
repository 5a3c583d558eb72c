"""``eac bench peers --quick``: every row has its numbers and they are consistent.

Runs the reduced workload with whichever peer libraries are installed (the
others must be reported with a one-line note); nothing here is timed.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def peers_report(tmp_path_factory):
    """The QUICK peers report (JSON) and what it printed, with a private $EAC_CACHE."""
    from eac.engine.cli import main

    cache = tmp_path_factory.mktemp("eac_cache")
    out = tmp_path_factory.mktemp("peers") / "peers.json"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("EAC_CACHE", str(cache))
        args = ["bench", "peers", "--quick", "--quiet", "--warmup", "0", "--json", str(out)]
        assert main(args) == 0
    return json.loads(out.read_text()), printed.getvalue()


def test_every_row_has_its_numbers(peers_report):
    data, printed = peers_report
    assert data["quick"] is True and "QUICK" in printed
    summary = data["extra"]["summary"]
    scenes = data["settings"]["scenes"]
    assert scenes >= 1
    for label, row in summary.items():
        assert len(row["per_image"]["seconds"]) == scenes, label
        assert row["seconds"] > 0, label
        assert row["evaluations"] >= 1, label
        assert row["peak_rss_rise_mb"] >= 0, label
        assert 0 <= row["insertion"] <= 100 and 0 <= row["deletion"] <= 100, label
        if row["constant_value_images"] < scenes:  # a row with no ranking has no Spearman
            assert -1 <= row["spearman"] <= 1, label
        assert 0 <= row["top3"] <= 1, label
        assert label.split(" [")[0] in printed, label


def test_exact_row_is_the_ground_truth(peers_report):
    data, _ = peers_report
    summary = data["extra"]["summary"]
    exact = next(v for k, v in summary.items() if k.startswith("exact Shapley"))
    assert exact["spearman"] == pytest.approx(1.0)
    assert exact["top3"] == pytest.approx(1.0)
    ns = data["settings"]["concepts_per_scene"]
    assert exact["evaluations"] == pytest.approx(np.mean([2**n for n in ns]))


def test_eac_evaluations_are_what_the_explanations_report(peers_report):
    data, _ = peers_report
    summary = data["extra"]["summary"]
    eac_rows = {k: v for k, v in summary.items() if v["library"] == "eac"}
    assert "eac [default]" in eac_rows
    for label, row in eac_rows.items():
        counted, reported = row["per_image"]["evaluations"], row["per_image"]["reported"]
        if label.split(" [")[0] in ("cam", "secam"):
            # the crop runs twice: the Explainer's full-crop run, then the method's own run
            # with the feature map output
            assert counted == [r + 1 for r in reported], label
        else:
            assert counted == reported, label
    # eac's budget is what eac reported on each image; peers that take an exact count use it
    budgets = data["settings"]["budget_per_scene"]
    assert budgets == summary["eac [default]"]["per_image"]["reported"]
    for label in ("captum KernelShap [eac budget]", "captum Lime [eac budget]",
                  "lime LimeImageExplainer [eac budget]", "shapiq auto (SV) [eac budget]"):
        if label in summary:
            assert summary[label]["per_image"]["evaluations"] == budgets, label


def test_ratios_are_the_ratio_of_measured_times(peers_report):
    data, printed = peers_report
    summary = data["extra"]["summary"]
    eac_seconds = summary["eac [default]"]["seconds"]
    assert summary["eac [default]"]["time_over_eac"] == pytest.approx(1.0)
    for label, row in summary.items():
        assert row["time_over_eac"] == pytest.approx(row["seconds"] / eac_seconds), label
        assert row["seconds"] == pytest.approx(float(np.mean(row["per_image"]["seconds"]))), label
    assert "time / eac" in printed


def test_missing_libraries_are_named_with_the_bench_extra(peers_report):
    from eac.bench.peers import LIBRARIES

    data, _ = peers_report
    libraries = {row["library"] for row in data["extra"]["summary"].values()}
    notes = data["settings"]["notes"]
    for name in LIBRARIES:
        if name not in libraries:
            assert "pip install 'explain-any-concept[bench]'" in notes[name] and name in notes[name]


def test_missing_library_note_is_one_line(monkeypatch):
    import importlib

    from eac.bench import peers

    real = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "captum":
            raise ImportError("No module named 'captum'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(peers.importlib, "import_module", fake_import)
    found, notes = peers._load_libraries()
    assert "captum" not in found
    expected = ("captum is not installed: pip install captum (or the bench extra: pip install "
                "'explain-any-concept[bench]' (from a source checkout: pip install '.[bench]'))")
    assert notes["captum"] == expected


def test_peers_refuse_overlapping_concepts():
    from eac.bench.harness import BenchError
    from eac.bench.peers import _segments

    masks = np.zeros((2, 4, 4), bool)
    masks[0, :, :3] = True
    masks[1, :, 2:] = True
    with pytest.raises(BenchError, match="partition"):
        _segments(masks)
    masks[0, :, 2] = False
    np.testing.assert_array_equal(_segments(masks)[0], [0, 0, 1, 1])
