"""The benchmark harness, on tiny models in quick mode.

Timings are never asserted: these tests check that the harness runs, that
every reported number is present and positive, that ratios are computed from
the measured numbers, that reduced runs are labelled QUICK, and that the
pieces with a right answer (the reference's values on a model whose answer is
known, the exact-N concept masks, torchvision layer names, statistics) give it.
"""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eac.bench import harness
from eac.bench.harness import BenchError, RunRecord, measure, ratios


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory):
    """A private $EAC_CACHE for the models the bench exports."""
    path = tmp_path_factory.mktemp("eac_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EAC_CACHE", str(path))
        yield path


# --- harness --------------------------------------------------------------------------------------


def _scripted(stage_values: list[dict[str, float]], counts: dict[str, float] | None = None):
    calls = iter(stage_values)

    def run() -> RunRecord:
        return RunRecord(stages=dict(next(calls)), counts=dict(counts or {"evaluations": 10}))

    return run


def test_measure_statistics_come_from_the_timed_runs():
    runs = [{"a": 9.0}, {"a": 1.0}, {"a": 3.0}, {"a": 2.0}]  # first is the warm-up
    side = measure("engine", _scripted(runs), warmup=1, repeat=3)
    assert side.stages["a"].runs == [1.0, 3.0, 2.0]
    assert side.stages["a"].median == 2.0
    assert side.stages["a"].min == 1.0 and side.stages["a"].max == 3.0
    assert "total" in side.stages and side.stages["total"].median >= 0
    assert side.counts == {"evaluations": 10}
    assert side.warmup == 1 and side.repeat == 3


def test_ratios_are_reference_median_over_engine_median():
    eng = measure("engine", _scripted([{"x": 1.0, "y": 4.0}, {"x": 3.0, "y": 2.0}, {"x": 2.0, "y": 3.0}]), repeat=3)
    ref = measure("reference", _scripted([{"x": 10.0, "z": 1.0}, {"x": 30.0, "z": 1.0}, {"x": 20.0, "z": 1.0}]),
                  repeat=3)
    r = ratios(eng, ref)
    assert r["x"] == pytest.approx(20.0 / 2.0)
    assert "y" not in r and "z" not in r  # only stages both sides measured
    assert r["total"] == pytest.approx(ref.stages["total"].median / eng.stages["total"].median)


def test_measure_refuses_changing_counts_and_bad_repeat():
    calls = iter([1, 2])

    def run() -> RunRecord:
        return RunRecord(stages={"a": 1.0}, counts={"evaluations": next(calls)})

    with pytest.raises(BenchError, match="counts changed"):
        measure("engine", run, repeat=2)
    with pytest.raises(BenchError, match="repeat"):
        measure("engine", _scripted([]), repeat=0)


def test_peak_memory_sees_a_temporary_allocation():
    size = 200 * 1024 * 1024
    with harness.PeakMemory() as mem:
        block = np.ones(size, dtype=np.uint8)  # touched pages: resident
        del block
    assert mem.peak - mem.baseline >= 0.8 * size
    assert mem.peak >= harness.current_rss() or mem.method != "sampled"


def test_machine_info_has_versions_and_cpu():
    info = harness.machine_info()
    assert info["cpu"] and info["cpu_count"] >= 1
    for name in ("eac", "numpy", "onnxruntime", "torch"):
        assert info["versions"][name]
    assert info["threads"]["torch_intra_op"] >= 1


# --- models ---------------------------------------------------------------------------------------

#: torchvision.models.resnet50(): parameter count and state-dict entries.
TORCHVISION_RESNET50_PARAMS = 25_557_032
TORCHVISION_RESNET50_KEYS = 320


def test_resnet50_matches_torchvision_layout():
    from eac.bench.models import resnet50

    model = resnet50()
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_RESNET50_PARAMS
    assert len(state) == TORCHVISION_RESNET50_KEYS
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer2.3.bn3.weight",
                "layer3.5.conv2.weight", "layer4.2.bn3.num_batches_tracked", "fc.bias"):
        assert key in state
    assert tuple(state["fc.weight"].shape) == (1000, 2048)
    assert tuple(state["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)  # stride on the 3×3 (v1.5)
    again = resnet50()
    assert all(torch.equal(a, b) for a, b in zip(state.values(), again.state_dict().values()))


def test_resnet_loads_a_saved_state_dict(tmp_path):
    from eac.bench.models import BenchModelError, load_state_dict, tiny_resnet

    src = tiny_resnet(seed=1)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    dst = load_state_dict(tiny_resnet(seed=2), path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(BenchModelError, match="not a state dict"):
        load_state_dict(tiny_resnet(), tmp_path / "bad.pth")


# --- concept masks --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 32, 60])
def test_exact_regions_gives_exactly_n_disjoint_covering_masks(n):
    from eac.bench.workloads import crop_for, exact_regions, load_photo

    crop = crop_for(load_photo("astronaut"), (224, 224), 256)
    masks = exact_regions(crop, n)
    assert masks.shape == (n, 224, 224)
    assert (masks.sum(0) == 1).all()
    assert masks.reshape(n, -1).any(1).all()
    assert np.array_equal(masks, exact_regions(crop, n))


# --- reference ------------------------------------------------------------------------------------


class _KnownAnswer(torch.nn.Module):
    """Class 1's logit grows with the brightness of the left quarter only; features are 2-d."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0, -4.0], [0.0, 4.0]]))
            self.fc.bias.zero_()

    def features(self, x):
        left = x[:, :, :, : x.shape[3] // 4].mean(dim=(1, 2, 3))
        right = x[:, :, :, x.shape[3] // 4 :].mean(dim=(1, 2, 3))
        return torch.stack([right, left], dim=1)

    def forward(self, x):
        return self.fc(self.features(x))


def _quarters(h=32, w=32):
    masks = np.zeros((4, h, w), bool)
    for i in range(4):
        masks[i, :, i * w // 4 : (i + 1) * w // 4] = True
    return masks


def test_reference_finds_the_concept_that_drives_the_class():
    from eac.bench.reference import ReferenceEAC, ReferenceSettings, TorchClassifier

    image = np.full((32, 32, 3), 200, np.uint8)
    clf = TorchClassifier.from_module(_KnownAnswer(), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    ref = ReferenceEAC(clf, ReferenceSettings(n_coalitions=400, epochs=30, mc_samples=4000, seed=3))
    res = ref.explain(image, _quarters())
    assert res.target == 1
    assert res.n_evaluations == 401
    assert int(np.argmax(res.values)) == 0
    assert res.values[0] > 0.05 and np.all(np.abs(res.values[1:]) < 0.5 * res.values[0])
    assert res.losses[-1] < res.losses[0]
    for stage in ("evaluations", "fit", "values"):
        assert res.timings[stage] > 0
    again = ref.explain(image, _quarters())
    assert np.array_equal(res.values, again.values)


def test_reference_refuses_bad_inputs():
    from eac.bench.reference import ReferenceEAC, TorchClassifier

    ref = ReferenceEAC(TorchClassifier.from_module(_KnownAnswer(), (0, 0, 0), (1, 1, 1)))
    with pytest.raises(BenchError, match="at least one concept"):
        ref.explain(np.zeros((32, 32, 3), np.uint8), np.zeros((0, 32, 32), bool))
    with pytest.raises(BenchError, match="do not match"):
        ref.explain(np.zeros((32, 32, 3), np.uint8), np.zeros((2, 16, 16), bool))


def test_reference_head_input_matches_the_model(bench_cache):
    """The hook path (models without a features method) gives the head's real input."""
    from eac.bench.reference import TorchClassifier
    from eac.bench.train_demo import SceneCNN

    model = SceneCNN(channels=(4, 8)).eval()
    clf = TorchClassifier.from_module(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = clf.features(x)
        assert feats.shape == (3, 8)
        assert torch.allclose(clf.fc(feats), model(x), atol=1e-6)


def test_reference_rebuilds_the_torch_model_of_a_classifier_folder(tmp_path):
    """--classifier DIR: the reference runs the same network as the engine's ONNX model."""
    from eac.bench.models import tiny_resnet
    from eac.bench.workloads import torch_classifier_for_folder
    from eac.engine.classifier import Classifier
    from eac.export.classifier import export_classifier

    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_resnet(seed=5).state_dict(), ckpt)
    folder = tmp_path / "clf"
    export_classifier(out=folder, module="eac.bench.models:tiny_resnet_factory", checkpoint=ckpt,
                      input_size=64, resize=None)
    reference = torch_classifier_for_folder(folder)
    engine = Classifier.from_folder(folder)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref_logits = reference.fc(reference.features(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(engine.run(x).logits, ref_logits, atol=1e-4, rtol=1e-4)
    ckpt.unlink()
    with pytest.raises(BenchError, match="checkpoint"):
        torch_classifier_for_folder(folder)


# --- whole workloads, quick -----------------------------------------------------------------------


def _all_numbers(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _all_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _all_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def _check_sides(data, engine="engine", reference="reference", repeat=2):
    assert data["quick"] is True and data["label"] == "QUICK"
    for name in (engine, reference):
        side = data["sides"][name]
        assert side["repeat"] == repeat
        for stats in side["stages"].values():
            assert len(stats["runs_s"]) == repeat
            assert stats["min_s"] <= stats["median_s"] <= stats["max_s"]
            assert stats["median_s"] == pytest.approx(statistics.median(stats["runs_s"]))
        assert side["stages"]["total"]["median_s"] > 0
        assert side["peak_rss_mb"] > 0
        assert len(side["load"]) == repeat and all(r["cpu_seconds"] > 0 for r in side["load"])
    # The machine running the tests may be busy: then the ratios are kept apart, and the verdict says why.
    verdict = data["verdict"]
    assert verdict["result"] == (verdict["max_load_per_cpu"] <= verdict["limit_load_per_cpu"])
    kept = data["ratios"] if verdict["result"] else data["ratios_not_a_result"]
    assert (data["ratios"] == {}) != verdict["result"] or not kept
    eng, ref = data["sides"][engine]["stages"], data["sides"][reference]["stages"]
    assert set(kept) == set(eng) & set(ref)
    for stage, value in kept.items():
        assert value > 0
        assert value == pytest.approx(ref[stage]["median_s"] / eng[stage]["median_s"])


def test_bench_explain_quick(bench_cache, tmp_path, capsys):
    from eac.engine.cli import main

    out = tmp_path / "explain.json"
    assert main(["bench", "explain", "--quick", "--int8", "--repeat", "2", "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "QUICK" in printed.splitlines()[0]
    assert "speed-up" in printed and "peak RSS" in printed and "machine load per timed run" in printed
    data = json.loads(out.read_text())
    _check_sides(data)
    # Default weights: the final layer fitted on scenes, explaining a generated scene.
    record = data["settings"]["classifier_record"]
    assert record["labels"] == ["red object", "no red object"] and 0 <= record["held_out_accuracy"] <= 1
    assert data["settings"]["photo"].startswith("generated scene")
    # The int8 option: its own timed side and its agreement with the fp32 explanation.
    assert data["sides"]["engine_int8"]["repeat"] == 2
    agree = data["extra"]["int8_agreement"]
    assert -1 <= agree["spearman"] <= 1 and 0 <= agree["top3"] <= 1 and agree["max_abs_value_difference"] >= 0
    assert "int8 classifier" in printed
    for name in ("engine", "reference"):
        side = data["sides"][name]
        for stage in ("evaluations", "fit", "values", "total"):
            assert side["stages"][stage]["median_s"] > 0, (name, stage)
        assert side["counts"]["concepts"] == 12
        assert side["counts"]["evaluations"] > 0
    assert data["sides"]["reference"]["counts"]["evaluations"] == 1 + data["settings"]["reference"]["n_coalitions"]
    for path, value in _all_numbers({k: data[k] for k in ("sides", "ratios")}):
        assert math.isfinite(value), path
    assert data["machine"]["versions"]["onnxruntime"]
    assert data["provider"] == "CPUExecutionProvider"


def test_bench_fidelity_quick(bench_cache, tmp_path, capsys):
    from eac.engine.cli import main

    out = tmp_path / "fidelity.json"
    assert main(["bench", "fidelity", "--quick", "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "QUICK" in printed
    data = json.loads(out.read_text())
    assert data["quick"] is True
    summary = data["extra"]["summary"]
    for method in ("shapley-exact", "eac", "eac-faithful", "kernelshap", "lime", "reference"):
        s = summary[method]
        assert s["evaluations"] > 0 and s["seconds"] > 0
        assert 0 <= s["insertion"] <= 100 and 0 <= s["deletion"] <= 100
        assert -1 <= s["spearman"] <= 1
    assert summary["shapley-exact"]["spearman"] == pytest.approx(1.0)
    assert max(data["settings"]["concepts_per_scene"]) <= 12
    assert summary["shapley-exact"]["evaluations"] == pytest.approx(
        np.mean([2 ** n + 1 for n in data["settings"]["concepts_per_scene"]]))


@pytest.mark.slow
def test_bench_concepts_quick(bench_cache, tmp_path, capsys):
    from eac.bench.models import import_segment_anything
    from eac.engine.cli import main

    import_segment_anything()  # through eac.bench.tvshim when torchvision is absent

    out = tmp_path / "concepts.json"
    assert main(["bench", "concepts", "--quick", "--repeat", "1", "--warmup", "0", "--quiet",
                 "--json", str(out)]) == 0
    assert "QUICK" in capsys.readouterr().out
    data = json.loads(out.read_text())
    _check_sides(data, repeat=1)  # the sides alternate with --repeat 2 in test_bench_explain_quick
    for name in ("engine", "reference"):
        assert data["sides"][name]["stages"]["encoder"]["median_s"] > 0
        assert data["sides"][name]["counts"]["prompts"] > 0
    keep = data["extra"]["agreement_keep_all"]
    assert keep["reference_masks"] > 0 and keep["engine_masks"] > 0
    # Same weights, every candidate kept: the engine reproduces segment-anything's masks.
    assert keep["mean_best_iou_reference_in_engine"] >= 0.9


@pytest.mark.slow
def test_bench_end_to_end_quick(bench_cache, tmp_path, capsys):
    from eac.bench.end_to_end import L0_MOBILE, L0_RESNET, MAX_CONCEPTS, REFERENCE, VITB_RESNET
    from eac.engine.cli import main

    out = tmp_path / "e2e.json"
    assert main(["bench", "end-to-end", "--quick", "--warmup", "0", "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "QUICK" in printed and "one image end to end" in printed
    data = json.loads(out.read_text())
    _check_sides(data, engine=L0_RESNET, repeat=1)
    assert set(data["sides"]) == {L0_RESNET, L0_MOBILE, VITB_RESNET, REFERENCE}
    for name, side in data["sides"].items():
        written = ("write",) if name != REFERENCE else ()  # the reference has no output format
        stages = ("load", "concepts", "evaluations", "fit", "values", "total", *written)
        for stage in stages:
            assert side["stages"][stage]["median_s"] > 0, (name, stage)
        assert side["counts"]["concepts explained"] == MAX_CONCEPTS  # random SAMs: their best 32, or 32 SLIC
        assert side["counts"]["evaluations"] > 0
