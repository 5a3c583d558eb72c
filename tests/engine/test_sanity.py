"""Sanity checks (eac.engine.sanity, `eac sanity`): the check tells a model-dependent method from one that is not."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from eac.engine.classifier import Classifier
from eac.engine.cli import main
from eac.engine.errors import SanityError
from eac.engine.randomise import ModelRandomiser
from eac.engine.sanity import (
    SIGNIFICANCE,
    compare_models,
    critical_similarity,
    fixed_budget_options,
    randomised_models,
    registered_method,
    similarity,
    top_k_kept,
    verdict,
)
from eac.engine.scenes import make_scene

#: Random rankings drawn to check the threshold's false-alarm rate, and the band it must fall in.
NULL_DRAWS = 4000
NULL_RATE_BAND = (0.035, 0.065)
#: A scene of the fixture's unseen stream whose red disk the classifier gets right, and its concept grid.
SCENE_SEED = 0
BACKGROUND_CELLS = 3


def area(classifier, crop, masks, target, seed):
    """A 'method' that ignores the model: each concept's area."""
    return masks.reshape(len(masks), -1).sum(axis=1).astype(np.float64)


def edge_density(classifier, crop, masks, target, seed):
    """A 'method' that ignores the model: the share of each concept's pixels on a Canny edge."""
    edges = cv2.Canny(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY), 50, 150) > 0
    return np.array([edges[m].mean() if m.any() else 0.0 for m in masks])


def test_threshold_is_the_false_alarm_rate_it_claims():
    n = 12
    critical = critical_similarity([n])
    assert critical == pytest.approx(1.6449 / np.sqrt(n - 1), abs=1e-3)
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(n)
    null = np.array([similarity(rng.standard_normal(n), reference) for _ in range(NULL_DRAWS)])
    assert NULL_RATE_BAND[0] < np.mean(null >= critical) < NULL_RATE_BAND[1]  # ≈ SIGNIFICANCE
    assert SIGNIFICANCE == 0.05
    # the mean over several images has a smaller threshold
    assert critical_similarity([n] * 4) == pytest.approx(critical / 2)
    with pytest.raises(SanityError):
        critical_similarity([2])


def test_similarity_topk_and_verdict_rules():
    ref = np.array([3.0, 2.0, 1.0, 0.0])
    assert similarity(ref * 2, ref) == pytest.approx(1.0)
    assert similarity(-ref, ref) == pytest.approx(-1.0)
    assert similarity(np.zeros(4), ref) == 0.0  # a constant explanation keeps no ranking
    assert np.isnan(similarity(ref, np.zeros(4)))  # nothing to compare with
    assert top_k_kept(np.array([0, 1, 2, 3.0]), ref, k=2) == 0.0
    assert top_k_kept(np.array([3, 1, 2, 0.0]), ref, k=2) == 0.5
    assert verdict(rerun=0.9, final=0.1, critical=0.5) == "pass"
    assert verdict(rerun=0.9, final=0.8, critical=0.5) == "fail"
    assert verdict(rerun=0.3, final=0.1, critical=0.5) == "inconclusive"  # noise alone would pass
    assert verdict(rerun=0.9, final=float("nan"), critical=0.5) == "inconclusive"


def test_fixed_budget_turns_stopping_rules_off():
    opts = fixed_budget_options("eac")
    assert opts["min_evaluations"] == opts["max_evaluations"]
    assert fixed_budget_options("eac", {"max_evaluations": 300})["min_evaluations"] == 300
    assert fixed_budget_options("loo") == {}


@pytest.mark.slow
def test_eac_decorrelates_under_cascading_randomisation_model_independent_methods_do_not(trained_classifier):
    from eac.engine.scenes import scene_concepts

    scene = trained_classifier.scene(SCENE_SEED)
    masks = scene_concepts(scene, background_cells=BACKGROUND_CELLS).masks
    original = Classifier.from_folder(trained_classifier.folder)
    randomiser = ModelRandomiser(trained_classifier.folder)
    methods = {"eac": registered_method("eac"), "area": area, "edges": edge_density}
    report = compare_models(original, scene.image, masks, methods, randomised_models(randomiser, ["cascading"]))
    critical = report.critical
    assert report.target == scene.label and report.probabilities[0] > 0.5
    assert [s.kind for s in report.steps] == ["rerun"] + ["cascading"] * len(randomiser.layers)
    assert report.rerun_similarity("eac") > 0.9  # eac agrees with itself on the unchanged model ...
    curve = report.curve("eac")
    assert curve[-1] < critical and report.verdict("eac") == "pass"  # ... and not with the destroyed one
    assert report.results[("eac", len(report.steps) - 1)].scale < 0.5 * report.original["eac"].max()
    for name in ("area", "edges"):  # the same image, the same concepts: these never change
        assert report.curve(name) == pytest.approx([1.0] * len(curve))
        assert report.verdict(name) == "fail"
    data = report.to_dict()
    assert data["methods"]["eac"]["verdicts"] == {"cascading": "pass"}
    assert data["methods"]["area"]["verdicts"] == {"cascading": "fail"}
    json.dumps(data, allow_nan=False)


@pytest.mark.slow
def test_cli_sanity_report_and_figures(trained_classifier, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), trained_classifier.scene(SCENE_SEED).image[..., ::-1])
    folder = str(trained_classifier.folder)
    assert main(["sanity", str(image), "--classifier", folder, "--list-layers"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == len(ModelRandomiser(folder).layers) and "Gemm" in listed[-1]
    out = tmp_path / "out"
    argv = ["sanity", str(image), "--classifier", folder, "--concepts", "grid", "--n-segments", "9",
            "--method", "loo", "--method", "cam", "--mode", "both", "--max-steps", "2", "--out", str(out),
            "--json", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert set(data["methods"]) == {"loo", "cam"}
    kinds = [s["kind"] for s in data["steps"]]
    assert kinds == ["rerun", "cascading", "cascading", "independent", "independent"]
    assert data["steps"][2]["randomised"] == len(listed)  # the last cascading step randomises every layer
    assert "method loo" in captured.err and "pass below" in captured.err
    assert {p.name for p in out.iterdir()} == {"sanity.json", "sanity.png", "sanity-thumbnails.png"}
    # without the plot extra: the report, and one line saying what the extra adds
    import eac.engine.sanity_figure as figure

    monkeypatch.setattr(figure, "plot_available", lambda: False)
    bare = tmp_path / "bare"
    assert main([*argv[:-4], "--out", str(bare), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "(from a source checkout: pip install '.[plot]') adds the curve" in printed
    assert {p.name for p in bare.iterdir()} == {"sanity.json"}


def test_cli_sanity_takes_the_shipped_classifier_by_name(tmp_path, capsys):
    """``--classifier demo`` works as in every other command (it once said "demo: no such model folder")."""
    from eac.engine.demo import demo_classifier_path

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    assert main(["sanity", str(image), "--classifier", "demo", "--list-layers"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == len(ModelRandomiser(str(demo_classifier_path())).layers) > 0


def test_too_few_concepts_say_so_instead_of_a_threshold_above_one(tmp_path, capsys):
    """3 concepts: the 5 % critical value of Spearman is 1.16, so no verdict can be ``pass``; the output said
    "pass: final Spearman below 1.16" and "INCONCLUSIVE (final Spearman -1.000, pass below 1.16 ...)"."""
    from eac.engine.sanity import critical_similarity, fewest_testable_concepts

    assert fewest_testable_concepts() == 4
    assert critical_similarity([4]) < 1.0 <= critical_similarity([3])
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), make_scene(np.random.default_rng(0), 128).image[..., ::-1])  # `eac demo`'s scene
    assert main(["sanity", str(image), "--classifier", "demo", "--sam", "demo", "--method", "eac",
                 "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "3 concepts" in text and "criterion: none can be met with 3 concepts" in text, text
    assert "cascading: INCONCLUSIVE (too few concepts: 3; the check needs at least 4)" in text, text
    assert "below 1.16" not in text
