"""``eac bench sanity``: every method through both sanity checks of Adebayo et al. (2018).

On the fidelity workload's trained scene classifier
(:func:`eac.bench.workloads.trained_scene_model`) and scenes
(:func:`~eac.bench.workloads.fidelity_scenes`, N ≤ 12 concepts):

* **model-parameter randomisation**: the classifier's layers re-initialised
  from the head down (cascading) and one at a time (independent) by
  :mod:`eac.engine.randomise`;
* **data randomisation**: the same network trained the same way on the same
  scenes with the labels permuted across the training images
  (:func:`eac.bench.train_demo.train` with ``permute_labels=True``; cached like
  the real model), exported the same way.

Every registered method (:func:`eac.engine.methods.method_names`) runs through
:func:`eac.engine.sanity.compare_models` with its stopping rule off, and, when
captum is installed (the ``bench`` extra), the peers' gradient methods
(``IntegratedGradients``, ``Saliency``, ``NoiseTunnel(Saliency)`` summed over
each concept, as in :mod:`eac.bench.peers`) on a PyTorch copy of each ONNX
model (:func:`scene_cnn_from_onnx`: the exported graph's weights loaded into
the network, checked against ONNX Runtime), so the gradient methods see
exactly the randomised weights the engine's methods see.

Per method: the mean over scenes of the rerun similarity, the similarity after
each cascading step and each single-layer step, and the data-randomised
model's; the verdicts use :func:`eac.engine.sanity.verdict` with the critical
value of the mean over the scenes (:func:`~eac.engine.sanity.critical_similarity`).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import models
from .harness import BenchError, BenchReport, machine_info
from .options import QUICK, BenchOptions
from .scene_model import fidelity_scenes, trained_scene_model

#: Scenes of a full run, and of a QUICK run.
SANITY_SCENES = 4
QUICK_SANITY_SCENES = 1
#: Seed of the weight re-initialisation.
RANDOMISE_SEED = 0
#: Seed of the label permutation's training run (the real model's training seed, so only the labels differ).
TRAIN_SEED = 0
#: The peers' gradient methods (bench/peers.py row names) checked when captum is installed.
GRADIENT_PEERS = ("captum IntegratedGradients", "captum Saliency", "captum NoiseTunnel(Saliency)")
#: A PyTorch copy of an ONNX scene model must give its logits to this (relative to the largest logit).
TORCH_COPY_RTOL = 1e-4
TORCH_COPY_ATOL = 1e-5
#: Random images of that check.
TORCH_COPY_PROBE = 2
DATA_LABEL = "trained on permuted labels"


# --- models -------------------------------------------------------------------------------------


def scene_cnn_from_onnx(path: str | Path, probe_seed: int = 0):
    """A :class:`~eac.bench.train_demo.SceneCNN` with the weights of an exported scene classifier graph.

    The exporter folds each batch norm into its conv, so the convs take the
    graph's weights and biases and the batch norms become identities; the
    ``Gemm`` is ``fc``. The copy is checked against ONNX Runtime on random
    images.

    Raises
    ------
    BenchError
        The graph is not a SceneCNN export, or the copy's logits differ.
    """
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper
    from torch import nn

    from .train_demo import SceneCNN

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    if not convs or len(gemms) != 1 or any(len(n.input) < 3 or n.input[1] not in inits for n in [*convs, *gemms]):
        raise BenchError(f"{path}: not an exported SceneCNN (Conv+bias layers and one Gemm expected)")
    channels = tuple(int(inits[c.input[1]].shape[0]) for c in convs)
    fc_w = inits[gemms[0].input[1]]
    net = SceneCNN(num_classes=int(fc_w.shape[0]), channels=channels)
    torch_convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for node, conv, norm in zip(convs, torch_convs, norms):
            conv.weight.copy_(torch.from_numpy(inits[node.input[1]].copy()))
            conv.bias.copy_(torch.from_numpy(inits[node.input[2]].copy()))
            norm.weight.fill_(1.0)
            norm.bias.zero_()
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)  # (x - 0) / sqrt(1 - eps + eps) = x
        net.fc.weight.copy_(torch.from_numpy(fc_w.copy()))
        net.fc.bias.copy_(torch.from_numpy(inits[gemms[0].input[2]].copy()))
    net.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    h, w = int(inp.shape[2]), int(inp.shape[3])
    x = np.random.default_rng(probe_seed).standard_normal((TORCH_COPY_PROBE, 3, h, w)).astype(np.float32)
    expected = session.run(["logits"], {inp.name: x})[0]
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    if not np.allclose(got, expected, rtol=TORCH_COPY_RTOL, atol=TORCH_COPY_ATOL * max(1.0, np.abs(expected).max())):
        raise BenchError(f"{path}: the PyTorch copy's logits differ from ONNX Runtime's by "
                         f"{np.abs(got - expected).max():.3g}")
    return net


@dataclass
class PermutedModel:
    """The scene classifier trained on permuted labels."""

    folder: Path
    fit_accuracy: float
    accuracy: float
    description: str


def permuted_label_model(opts: BenchOptions, size: int) -> PermutedModel:
    """The scene CNN trained like the bench's real one but on permuted labels (trained once, cached)."""
    from . import train_demo

    if opts.quick:
        n_train, epochs = QUICK.train_n, QUICK.train_epochs
    else:
        n_train, epochs = 3000, 8
    key = models._fingerprint("scene-permuted", size, n_train, epochs, train_demo.DEMO_CHANNELS, TRAIN_SEED)
    root = models.cache_dir() / f"scene-cnn-permuted-{key}"
    folder, info_path = root / "classifier", root / "training.json"
    if not ((folder / "manifest.json").is_file() and info_path.is_file()):
        opts.log(f"training the scene classifier on permuted labels ({n_train} scenes of {size}², {epochs} epochs; "
                 "cached)...")
        result = train_demo.train(size=size, n_train=n_train, epochs=epochs, seed=TRAIN_SEED, permute_labels=True)
        root.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder)
        train_demo.export_folder(result.model, folder, size)
        info_path.write_text(json.dumps({"fit_accuracy": result.fit_accuracy, "accuracy": result.accuracy,
                                         "n_train": n_train, "epochs": epochs}))
    info = json.loads(info_path.read_text())
    desc = (f"SceneCNN trained on permuted labels ({size}×{size}, {n_train} scenes, {epochs} epochs, seed "
            f"{TRAIN_SEED}{', QUICK' if opts.quick else ''}): accuracy on its own training labels "
            f"{info['fit_accuracy']:.2f}, on real held-out scenes {info['accuracy']:.2f}")
    return PermutedModel(folder, float(info["fit_accuracy"]), float(info["accuracy"]), desc)


# --- methods ------------------------------------------------------------------------------------


def engine_methods(quick: bool, batch: int | None = None) -> dict[str, Any]:
    """Every registered method as a sanity method (QUICK: eac-faithful with the QUICK budget)."""
    from ..engine.methods import method_names
    from ..engine.sanity import registered_method

    out = {}
    for name in method_names():
        options = dict(QUICK.faithful_options) if quick and name == "eac-faithful" else None
        out[name] = registered_method(name, options, batch)
    return out


def gradient_methods(torch_models: dict[int, Any], mean, std, batch: int) -> tuple[dict[str, Any], str | None]:
    """The peers' gradient methods on the PyTorch copy of each model (``torch_models``: id(classifier) → net).

    Returns
    -------
    (dict, str or None)
        Name → sanity method, and a note when captum is missing.
    """
    try:
        import captum
    except ImportError:
        from .peers import missing_library_note

        return {}, missing_library_note("captum")
    import torch

    from .peers import SETTING_DEFAULT, Case, _segments, _torch_model, captum_peers
    from .reference import TorchClassifier

    def make(label: str):
        def run(classifier: Any, crop: np.ndarray, masks: np.ndarray, target: int, seed: int) -> np.ndarray:
            tc = TorchClassifier.from_module(torch_models[id(classifier)], mean, std)
            model = _torch_model(tc)
            peer = next(p for p in captum_peers(captum, model, seed, batch, False)
                        if p.name == label and p.setting == SETTING_DEFAULT)
            x = tc.image_norm(crop)[None]
            base = torch.from_numpy(np.broadcast_to((-np.asarray(mean, np.float32) / np.asarray(std, np.float32))
                                                    [:, None, None], x.shape[1:]).copy())[None]
            case = Case(0, crop, masks, _segments(masks), target, float("nan"), x, base, None)
            values, _ = peer.run(case, peer.kwargs(case))
            return np.asarray(values, np.float64)

        return run

    return {label: make(label) for label in GRADIENT_PEERS}, None


# --- the workload -------------------------------------------------------------------------------


def run_sanity(opts: BenchOptions) -> BenchReport:
    """Both sanity checks for every method on the scene classifier; see the module docstring."""
    from ..engine.classifier import Classifier
    from ..engine.evaluator import DEFAULT_BATCH_SIZE
    from ..engine.randomise import ModelRandomiser
    from ..engine.sanity import SanityStep, compare_models, randomised_models

    sm = trained_scene_model(opts)
    count = QUICK_SANITY_SCENES if opts.quick else SANITY_SCENES
    scenes = fidelity_scenes(sm.size, count)
    notes: dict[str, str] = {}
    session = opts.session_options()
    randomiser = ModelRandomiser(sm.folder, seed=RANDOMISE_SEED)
    torch_models: dict[int, Any] = {}
    gradients_wanted = True

    def torch_copy(classifier: Any, folder: Path) -> None:
        nonlocal gradients_wanted
        if not gradients_wanted:
            return
        try:
            torch_models[id(classifier)] = scene_cnn_from_onnx(folder / classifier.manifest.files["model"]["path"])
        except BenchError as exc:
            gradients_wanted = False
            notes["gradient methods"] = f"skipped: {exc}"

    original = sm.engine
    torch_copy(original, sm.folder)
    steps: list[tuple[SanityStep, Any]] = []
    opts.log(f"sanity: writing the randomised copies of {len(randomiser.layers)} layers")
    for step, classifier in randomised_models(randomiser, ("cascading", "independent"), session_options=session):
        torch_copy(classifier, classifier.folder)  # the copy's folder exists until the next one is made
        steps.append((step, classifier))
    if opts.classifier:
        notes["data randomisation"] = "skipped: --classifier given (the bench can only retrain its scene classifier)"
        permuted = None
    else:
        permuted = permuted_label_model(opts, sm.size)
        data_classifier = Classifier.from_folder(permuted.folder, session_options=session)
        torch_copy(data_classifier, permuted.folder)
        steps.append((SanityStep("data", DATA_LABEL), data_classifier))
    methods = engine_methods(opts.quick)
    if gradients_wanted:
        extra, note = gradient_methods(torch_models, sm.torch.mean, sm.torch.std, DEFAULT_BATCH_SIZE)
        methods.update(extra)
        if note:
            notes["gradient methods"] = note
    reports = []
    for i, (scene, concepts) in enumerate(scenes):
        opts.log(f"sanity: scene {i + 1}/{len(scenes)} ({len(concepts)} concepts, {len(methods)} methods, "
                 f"{len(steps) + 1} models)")
        reports.append(compare_models(original, scene.image, concepts.masks, methods, steps, seed=opts.seed))
    summary = summarise(reports)
    settings = {
        "classifier": sm.description, "classifier_folder": str(sm.folder), "scenes": len(scenes),
        "concepts_per_scene": [r.n_concepts for r in reports], "layers": randomiser.layer_names,
        "randomise_seed": RANDOMISE_SEED, "seed": opts.seed,
        "data_randomisation": permuted.description if permuted else None,
        "stopping_rules": "off (every model gets the same evaluations)",
        "critical_similarity": summary["critical_similarity"], "notes": notes,
    }
    tables = summary_tables(summary, randomiser.layer_names)
    if notes:
        tables.append(("notes", ["what", "note"], [[k, v] for k, v in notes.items()]))
    return BenchReport(workload=opts.workload, quick=opts.quick, command=opts.command, sides={}, ratios={},
                       machine=machine_info(opts.threads), provider=original.provider, settings=settings,
                       extra={"summary": summary, "per_scene": [r.to_dict() for r in reports]}, tables=tables)


def summarise(reports: list[Any]) -> dict[str, Any]:
    """Means over scenes per method and step, and the verdicts on the means."""
    from ..engine.sanity import critical_similarity, verdict

    first = reports[0]
    critical = critical_similarity([r.n_concepts for r in reports])
    out: dict[str, Any] = {"critical_similarity": critical, "methods": {}}
    for method in first.methods:
        def mean(kind: str, field: str = "similarity", m: str = method) -> list[float]:
            return [float(np.nanmean([getattr(r.results[(m, r.indices(kind)[j])], field) for r in reports]))
                    for j in range(len(first.indices(kind)))]

        rerun = mean("rerun")[0]
        cascading, independent, data = mean("cascading"), mean("independent"), mean("data")
        entry = {"rerun": rerun, "cascading": cascading, "independent": independent,
                 "cascading_top_k_kept": mean("cascading", "top_k_kept"),
                 "model_randomisation": verdict(rerun, cascading[-1], critical) if cascading else "n/a"}
        if data:
            entry.update({"data": data[0], "data_top_k_kept": mean("data", "top_k_kept")[0],
                          "data_randomisation": verdict(rerun, data[0], critical)})
        out["methods"][method] = entry
    return out


def summary_tables(summary: dict[str, Any], layers: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The printed tables: verdicts and curves, then single layers."""
    critical = summary["critical_similarity"]
    methods = summary["methods"]
    n = len(next(iter(methods.values()))["cascading"])
    header = ["method", "rerun ρ", f"cascading ρ, 1 → {n} layers", "model randomisation", "permuted labels ρ",
              "data randomisation"]
    rows = []
    for name, m in methods.items():
        rows.append([name, _f2(m["rerun"]), " ".join(_f2(v) for v in m["cascading"]), m["model_randomisation"],
                     _f2(m["data"]) if "data" in m else "", m.get("data_randomisation", "n/a")])
    title = (f"sanity checks: Spearman ρ with the original model's values, mean over scenes; a method passes "
             f"when ρ < {critical:.2f} on the fully randomised model / the permuted-label model")
    head_first = list(reversed(layers))
    single = ["method", *[f"only {name.rsplit('/', 2)[-2] if name.count('/') >= 2 else name}" for name in head_first]]
    single_rows = [[name, *[_f2(v) for v in m["independent"]]] for name, m in methods.items()]
    return [(title, header, rows), ("independent randomisation: ρ with one layer re-initialised (head first)",
                                    single, single_rows)]


def _f2(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.2f}"


__all__ = ["permuted_label_model", "run_sanity", "scene_cnn_from_onnx", "summarise"]
