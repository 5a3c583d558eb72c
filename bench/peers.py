"""``eac bench peers``: eac against the libraries people would use instead, in one run.

Every peer explains the same thing on the same inputs: the probability of the
explained class (the classifier's top-1 on the whole image) under concept
masking, where pixels of concepts left out are black (the reference's
baseline), on the fidelity workload's trained scene classifier and scenes
(:func:`eac.bench.scene_model.trained_scene_model`, :func:`~eac.bench.scene_model.fidelity_scenes`:
N ≤ 12 concepts, so exact Shapley values by enumeration are the ground truth).
The torch libraries run the PyTorch model; eac runs its ONNX export.

Peers
-----
captum
    ``ShapleyValueSampling``, ``KernelShap``, ``Lime`` and ``FeatureAblation``
    with the concepts as ``feature_mask`` and the black image as ``baselines``;
    ``IntegratedGradients`` (black baseline), ``Saliency`` and ``NoiseTunnel``
    (SmoothGrad over ``Saliency``) on pixels, summed over each concept.
shap
    ``KernelExplainer`` (``l1_reg=False``) and ``PermutationExplainer`` on the
    concept coalitions (a coalition's value is the masked image's probability,
    the way shap's image examples explain superpixels; background: no concept).
lime
    ``LimeImageExplainer`` with the concepts as ``segmentation_fn`` and
    ``hide_color=0`` (black).
shapiq
    The approximator ``shapiq`` picks itself for Shapley values
    (``approximator="auto"``, index ``SV``: its KernelSHAP) on the same game.
    It has no default budget (the budget is a required argument).
eac
    ``eac``, ``eac-faithful``, ``kernelshap``, ``lime``, ``loo`` through
    :func:`eac.engine.explainer.explain`, and ``secam`` / ``cam`` when the model
    folder has a feature map.

Each peer runs at its documented defaults and at eac's evaluation budget (the
evaluations ``eac`` used on that image, default settings), with eac's
classifier batch size. Per row: seconds per image, classifier evaluations
(counted by wrapping the torch model's forward, or the ONNX classifier's run),
peak resident memory rise, Spearman and top-3 agreement with the exact Shapley
values, insertion / deletion AUC (:func:`eac.engine.metrics.insertion_deletion`
on one ONNX :class:`~eac.engine.evaluator.MaskedEvaluator`, outside the timed
call), and the row's seconds over ``eac``'s.

The peer libraries are imported lazily; a missing one skips its rows with a
one-line note naming the bench extra (:func:`eac.engine.distribution.install_hint`).
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.distribution import install_hint
from .agreement import TOP_K, ranking_agreement
from .harness import BenchError, BenchReport, PeakMemory, machine_info
from .options import QUICK, BenchOptions
from .scene_model import fidelity_scenes, trained_scene_model

#: Scenes of a full run, and of a QUICK run.
PEER_SCENES = 4
QUICK_PEER_SCENES = 1
#: A QUICK run caps the peers' default sample counts at this (labelled in the setting column).
QUICK_MAX_SAMPLES = 256
#: Row whose time every ratio divides by.
EAC_ROW = "eac"
#: Ground-truth row.
EXACT_ROW = "exact Shapley (enumeration)"
SETTING_DEFAULT = "default"
SETTING_BUDGET = "eac budget"
#: The peer libraries and their pip names.
LIBRARIES = {"captum": "captum", "shap": "shap", "lime": "lime", "shapiq": "shapiq"}
#: eac methods compared (secam/cam are added when the model folder has a feature map).
EAC_METHODS = ("eac", "eac-faithful", "kernelshap", "lime", "loo")
CAM_METHODS = ("secam", "cam")
#: shap KernelExplainer's nsamples="auto": 2N + this.
SHAP_AUTO_EXTRA = 2048
_MIB = 1024 * 1024


def documented_default(function: Callable, argument: str) -> Any:
    """The default value of ``argument`` in ``function``'s signature (the installed version's)."""
    import inspect

    return inspect.signature(function).parameters[argument].default


def _kw_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def missing_library_note(name: str) -> str:
    """The one-line note of a peer library that is not installed."""
    return f"{name} is not installed: pip install {LIBRARIES[name]} (or the bench extra: {install_hint('bench')})"


def _load_libraries() -> tuple[dict[str, Any], dict[str, str]]:
    found, notes = {}, {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.import_module(name)
        except ImportError:
            notes[name] = missing_library_note(name)
    return found, notes


# --- counted classifiers -------------------------------------------------------------------------


class CountingClassifier:
    """The eac runtime classifier, counting the images it runs (all else is the inner one's)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.images = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, batch: np.ndarray, *args: Any, **kwargs: Any):
        self.images += int(np.asarray(batch).shape[0])
        return self._inner.run(batch, *args, **kwargs)


def _torch_model(tc: Any):
    """The PyTorch classifier as one module returning probabilities, counting its input rows."""
    import torch

    class ProbabilityModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.images = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.images += int(x.shape[0])
            return torch.softmax(tc.fc(tc.features(x)), dim=1)

    return ProbabilityModel().eval()


# --- one image -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One scene, everything a peer may use, shared by all rows."""

    index: int
    crop: np.ndarray  # H×W×3 uint8
    masks: np.ndarray  # N×H×W bool, a partition of the crop
    segments: np.ndarray  # H×W int, concept index of each pixel
    target: int
    full_prob: float
    x: Any  # 1×3×H×W torch, normalised crop
    base: Any  # 1×3×H×W torch, the black image normalised
    evaluator: Any  # MaskedEvaluator on the ONNX classifier (insertion / deletion, untimed)
    exact: np.ndarray | None = None
    budget: int | None = None

    @property
    def n(self) -> int:
        return int(self.masks.shape[0])


def _segments(masks: np.ndarray) -> np.ndarray:
    cover = masks.sum(axis=0)
    if not (cover == 1).all():
        raise BenchError(
            "the peers workload needs concepts that partition the image (captum's feature_mask, "
            "lime's segmentation); these overlap or leave pixels uncovered"
        )
    return np.argmax(masks, axis=0).astype(np.int64)


def _concept_means(attr: np.ndarray, case: Case) -> np.ndarray:
    """Per-concept value of a group attribution (captum copies it to each pixel of the group)."""
    plane = np.asarray(attr, np.float64).reshape(-1, *case.segments.shape)[0]
    return np.bincount(
        case.segments.ravel(), weights=plane.ravel(), minlength=case.n
    ) / np.bincount(case.segments.ravel(), minlength=case.n)


def _concept_sums(attr: np.ndarray, case: Case) -> np.ndarray:
    """Pixel attributions (any channel count) summed over each concept."""
    plane = np.asarray(attr, np.float64).reshape(-1, *case.segments.shape).sum(axis=0)
    return np.bincount(case.segments.ravel(), weights=plane.ravel(), minlength=case.n)


def _coalition_game(case: Case, model: Any, batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """v(b): probability of the target on the image keeping the concepts in b (M×N → M), torch."""
    import torch

    x, base = case.x[0].numpy(), case.base[0].numpy()
    flat = case.masks.reshape(case.n, -1).astype(np.float32)

    def value(coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.asarray(coalitions, np.float32).reshape(-1, case.n)
        out = np.empty(len(coalitions))
        for start in range(0, len(coalitions), batch):
            keep = (coalitions[start : start + batch] @ flat > 0).reshape(-1, 1, *x.shape[1:])
            images = np.where(keep, x[None], base[None]).astype(np.float32)
            with torch.no_grad():
                probs = model(torch.from_numpy(images))
            out[start : start + batch] = probs[:, case.target].numpy()
        return out

    return value


# --- rows ----------------------------------------------------------------------------------------


@dataclass
class Peer:
    """One row: a library's explainer at one setting.

    ``kwargs(case)`` gives the keyword arguments the row passes (shown in the
    settings table); ``run(case, kwargs)`` returns the N concept values and a
    JSON-ready info dict.
    """

    name: str
    library: str
    setting: str
    kwargs: Callable[[Case], dict[str, Any]]
    run: Callable[[Case, dict[str, Any]], tuple[np.ndarray, dict[str, Any]]]
    note: str = ""
    backend: str = "torch"  # whose evaluations are counted: "torch" or "onnx"

    def describe(self, case: Case) -> str:
        text = _kw_text(self.kwargs(case)) or "defaults"
        return f"{text}; {self.note}" if self.note else text


@dataclass
class RowStats:
    """Per-image measurements of one row."""

    seconds: list[float] = field(default_factory=list)
    evaluations: list[float] = field(default_factory=list)
    reported: list[float] = field(default_factory=list)
    rss_rise_mb: list[float] = field(default_factory=list)
    spearman: list[float] = field(default_factory=list)
    topk: list[float] = field(default_factory=list)
    insertion: list[float] = field(default_factory=list)
    deletion: list[float] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    constant: int = 0  # images on which the row gave every concept the same value (no ranking)


def _default_setting(quick: bool, capped: bool) -> str:
    return (
        f"{SETTING_DEFAULT} (QUICK: ≤ {QUICK_MAX_SAMPLES} samples)"
        if quick and capped
        else SETTING_DEFAULT
    )


def _cap(value: Any, quick: bool) -> Any:
    return min(value, QUICK_MAX_SAMPLES) if quick and isinstance(value, int) else value


def _eac_budget_options(method: str, budget: int) -> dict[str, Any]:
    from ..engine.methods import get_method

    cls = get_method(method)
    return cls.budget(max(int(budget), cls.min_budget))


def eac_peers(engine: Any, seed: int, batch: int, with_cam: bool, quick: bool) -> list[Peer]:
    """eac's methods through :func:`eac.engine.explainer.explain` on the (counted) ONNX classifier."""
    from ..engine.explainer import explain

    def run_method(method: str):
        def run(case: Case, kwargs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
            e = explain(
                case.crop,
                engine,
                case.masks,
                method=method,
                target=case.target,
                seed=seed,
                batch_size=batch,
                **kwargs,
            )
            return np.asarray(e.values, np.float64), {"reported_evaluations": e.num_evaluations}

        return run

    quick_faithful = dict(QUICK.faithful_options) if quick else {}
    rows = []
    for method in EAC_METHODS + (CAM_METHODS if with_cam else ()):
        defaults = quick_faithful if method == "eac-faithful" else {}
        setting = _default_setting(quick, bool(defaults))
        rows.append(
            Peer(
                method,
                "eac",
                setting,
                lambda c, d=defaults: dict(d),
                run_method(method),
                backend="onnx",
            )
        )
        if method not in (EAC_ROW, "loo", *CAM_METHODS):
            rows.append(
                Peer(
                    method,
                    "eac",
                    SETTING_BUDGET,
                    lambda c, m=method: _eac_budget_options(m, c.budget),
                    run_method(method),
                    backend="onnx",
                )
            )
    return rows


def captum_peers(captum: Any, model: Any, seed: int, batch: int, quick: bool) -> list[Peer]:
    """captum's perturbation explainers on the concepts, gradient ones summed over them."""
    import torch
    from captum import attr

    def perturbation(
        cls_name: str, budget_kw: Callable[[Case], dict[str, Any]] | None
    ) -> list[Peer]:
        cls = getattr(attr, cls_name)

        def run(case: Case, kwargs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
            torch.manual_seed(seed)  # captum samples with torch's global generator
            mask = torch.from_numpy(case.segments)[None, None]
            out = cls(model).attribute(
                case.x, baselines=case.base, target=case.target, feature_mask=mask, **kwargs
            )
            return _concept_means(out.detach().numpy()[:, :1], case), {}

        note = "black baselines, concepts as feature_mask"
        shown = {
            k: documented_default(cls.attribute, k)
            for k in ("n_samples", "perturbations_per_eval")
            if k in inspect_parameters(cls.attribute)
        }
        capped = {k: _cap(v, quick) for k, v in shown.items()}
        rows = [
            Peer(
                f"captum {cls_name}",
                "captum",
                _default_setting(quick, capped != shown),
                lambda c: dict(capped),
                run,
                note,
            )
        ]
        if budget_kw is not None:
            rows.append(
                Peer(
                    f"captum {cls_name}",
                    "captum",
                    SETTING_BUDGET,
                    lambda c: {**budget_kw(c), "perturbations_per_eval": batch},
                    run,
                    note,
                )
            )
        return rows

    def gradient(
        label: str,
        make: Callable[[], Any],
        shown: dict[str, Any],
        budget_kw: Callable[[Case], dict[str, Any]] | None,
        black_baseline: bool,
    ) -> list[Peer]:
        def run(case: Case, kwargs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
            torch.manual_seed(seed)  # NoiseTunnel draws its noise from torch's global generator
            extra = {"baselines": case.base} if black_baseline else {}
            out = make().attribute(
                case.x.clone().requires_grad_(True), target=case.target, **extra, **kwargs
            )
            return _concept_sums(out.detach().numpy(), case), {}

        note = (
            "black baseline; " if black_baseline else ""
        ) + "pixel attributions summed over each concept"
        rows = [
            Peer(f"captum {label}", "captum", SETTING_DEFAULT, lambda c: dict(shown), run, note)
        ]
        if budget_kw is not None:
            rows.append(Peer(f"captum {label}", "captum", SETTING_BUDGET, budget_kw, run, note))
        return rows

    ig = attr.IntegratedGradients.attribute
    nt = attr.NoiseTunnel.attribute
    rows: list[Peer] = []
    rows += perturbation(
        "ShapleyValueSampling", lambda c: {"n_samples": max(1, (c.budget - 1) // c.n)}
    )
    rows += perturbation("KernelShap", lambda c: {"n_samples": c.budget})
    rows += perturbation("Lime", lambda c: {"n_samples": c.budget})
    rows += perturbation("FeatureAblation", None)
    rows += gradient(
        "IntegratedGradients",
        lambda: attr.IntegratedGradients(model),
        {"n_steps": documented_default(ig, "n_steps")},
        lambda c: {"n_steps": c.budget, "internal_batch_size": batch},
        black_baseline=True,
    )
    rows += gradient(
        "Saliency",
        lambda: attr.Saliency(model),
        {"abs": documented_default(attr.Saliency.attribute, "abs")},
        None,
        black_baseline=False,
    )
    rows += gradient(
        "NoiseTunnel(Saliency)",
        lambda: attr.NoiseTunnel(attr.Saliency(model)),
        {k: documented_default(nt, k) for k in ("nt_type", "nt_samples", "stdevs")},
        lambda c: {"nt_samples": c.budget, "nt_samples_batch_size": batch},
        black_baseline=False,
    )
    return rows


def inspect_parameters(function: Callable) -> set[str]:
    """Names of ``function``'s parameters."""
    import inspect

    return set(inspect.signature(function).parameters)


def shap_peers(shap: Any, model: Any, seed: int, batch: int, quick: bool) -> list[Peer]:
    """shap's KernelExplainer (l1_reg off) and PermutationExplainer on the concept coalitions."""

    def kernel(case: Case, kwargs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        np.random.seed(seed)  # KernelExplainer samples with numpy's global generator
        explainer = shap.KernelExplainer(_coalition_game(case, model, batch), np.zeros((1, case.n)))
        values = explainer.shap_values(np.ones((1, case.n)), l1_reg=False, silent=True, **kwargs)
        return np.asarray(values, np.float64).reshape(-1)[: case.n], {}

    def permutation(case: Case, kwargs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        masker = shap.maskers.Independent(np.zeros((1, case.n)), max_samples=1)
        explainer = shap.PermutationExplainer(
            _coalition_game(case, model, batch), masker, seed=seed
        )
        out = explainer(np.ones((1, case.n)), silent=True, **kwargs)
        return np.asarray(out.values, np.float64).reshape(-1)[: case.n], {}

    def kernel_default(case: Case) -> dict[str, Any]:
        auto = 2 * case.n + SHAP_AUTO_EXTRA  # what nsamples="auto" means
        return {"nsamples": _cap(auto, quick)} if quick else {"nsamples": "auto"}

    perm_default = documented_default(shap.PermutationExplainer.__call__, "max_evals")
    note = "l1_reg=False; coalitions of concepts, background = no concept (black image)"
    pnote = "coalitions of concepts, background = no concept (black image)"
    return [
        Peer(
            "shap KernelExplainer",
            "shap",
            _default_setting(quick, True),
            kernel_default,
            kernel,
            note + ("" if quick else f" (auto = 2N + {SHAP_AUTO_EXTRA})"),
        ),
        Peer(
            "shap KernelExplainer",
            "shap",
            SETTING_BUDGET,
            lambda c: {"nsamples": c.budget},
            kernel,
            note,
        ),
        Peer(
            "shap PermutationExplainer",
            "shap",
            _default_setting(quick, _cap(perm_default, quick) != perm_default),
            lambda c: {"max_evals": _cap(perm_default, quick)},
            permutation,
            pnote,
        ),
        Peer(
            "shap PermutationExplainer",
            "shap",
            SETTING_BUDGET,
            lambda c: {"max_evals": max(c.budget, 2 * c.n + 1)},
            permutation,
            pnote,
        ),
    ]


@contextmanager
def _no_progress_bar(module: Any) -> Iterator[None]:
    """Silence a module's ``tqdm`` progress bar (lime draws one per explanation) for a block."""
    original = getattr(module, "tqdm", None)
    module.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        module.tqdm = original


def lime_peers(lime: Any, tc: Any, model: Any, seed: int, batch: int, quick: bool) -> list[Peer]:
    """lime's LimeImageExplainer with the concepts as segmentation and black hidden concepts."""
    import torch
    from lime import lime_image

    mean = np.asarray(tc.mean, np.float32)
    std = np.asarray(tc.std, np.float32)

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        x = (np.asarray(images, np.float32) / 255.0 - mean) / std
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()

    def run(case: Case, kwargs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        explainer = lime_image.LimeImageExplainer(random_state=seed)
        with _no_progress_bar(lime_image):
            e = explainer.explain_instance(
                case.crop,
                classifier_fn,
                labels=(case.target,),
                top_labels=None,
                hide_color=0,
                segmentation_fn=lambda image: case.segments,
                random_seed=seed,
                **kwargs,
            )
        values = np.zeros(case.n)
        for index, weight in e.local_exp[case.target]:
            values[int(index)] = weight
        return values, {}

    explain_instance = lime_image.LimeImageExplainer.explain_instance
    shown = {k: documented_default(explain_instance, k) for k in ("num_samples", "batch_size")}
    capped = {"num_samples": _cap(shown["num_samples"], quick), "batch_size": shown["batch_size"]}
    note = "hide_color=0 (black), concepts as segmentation_fn"
    return [
        Peer(
            "lime LimeImageExplainer",
            "lime",
            _default_setting(quick, capped != shown),
            lambda c: dict(capped),
            run,
            note,
        ),
        Peer(
            "lime LimeImageExplainer",
            "lime",
            SETTING_BUDGET,
            lambda c: {"num_samples": c.budget, "batch_size": batch},
            run,
            note,
        ),
    ]


def shapiq_peers(shapiq: Any, model: Any, seed: int, batch: int) -> list[Peer]:
    """shapiq's own choice of Shapley approximator (``approximator="auto"``, index SV)."""

    def run(case: Case, kwargs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        explainer = shapiq.AgnosticExplainer(
            _coalition_game(case, model, batch),
            n_players=case.n,
            index="SV",
            max_order=1,
            approximator="auto",
            random_state=seed,
        )
        values = explainer.explain(**kwargs)
        return (
            np.asarray(values.get_n_order_values(1), np.float64),
            {"approximator": type(explainer.approximator).__name__},
        )

    return [
        Peer(
            "shapiq auto (SV)",
            "shapiq",
            SETTING_BUDGET,
            lambda c: {"budget": int(c.budget)},
            run,
            "no default budget (a required argument); approximator='auto' picks KernelSHAP for SV; "
            "coalitions of concepts",
        )
    ]


# --- the workload --------------------------------------------------------------------------------


def exact_values(evaluator: Any, target: int) -> np.ndarray:
    """Exact Shapley values of the target's probability: all 2^N coalitions, ``evaluator``."""
    from ..kernels.shapley import all_coalitions, exact_shapley
    from ..kernels.surrogate import softmax

    n = evaluator.num_concepts
    probs = softmax(evaluator.evaluate(all_coalitions(n), desc="exact").logits)[:, target]
    return exact_shapley(probs, n)


def _ratio(seconds: float, eac_seconds: float) -> float:
    return seconds / eac_seconds if eac_seconds > 0 else float("nan")


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None]
    return (
        float(np.nanmean(finite))
        if finite and not all(math.isnan(v) for v in finite)
        else float("nan")
    )


def run_peers(opts: BenchOptions) -> BenchReport:
    """Every peer on the fidelity scenes; see the module docstring."""
    import torch

    from ..engine.evaluator import DEFAULT_BATCH_SIZE, MaskedEvaluator
    from ..engine.metrics import insertion_deletion
    from ..kernels.surrogate import softmax

    libraries, notes = _load_libraries()
    for note in notes.values():
        opts.log(note)
    sm = trained_scene_model(opts)
    count = QUICK_PEER_SCENES if opts.quick else PEER_SCENES
    scenes = fidelity_scenes(sm.size, count)
    engine = CountingClassifier(sm.engine)
    model = _torch_model(sm.torch)
    batch = DEFAULT_BATCH_SIZE
    with_cam = bool(getattr(sm.engine, "has_feature_map", False)) and sm.engine.head is not None
    if not with_cam:
        notes["secam/cam"] = (
            "secam and cam skipped: the scene classifier's folder has no feature map output "
            "(re-export it with an eac that writes feature_map)"
        )
    peers = eac_peers(engine, opts.seed, batch, with_cam, opts.quick)
    if "captum" in libraries:
        peers += captum_peers(libraries["captum"], model, opts.seed, batch, opts.quick)
    if "shap" in libraries:
        peers += shap_peers(libraries["shap"], model, opts.seed, batch, opts.quick)
    if "lime" in libraries:
        peers += lime_peers(libraries["lime"], sm.torch, model, opts.seed, batch, opts.quick)
    if "shapiq" in libraries:
        peers += shapiq_peers(libraries["shapiq"], model, opts.seed, batch)

    mean = np.asarray(sm.torch.mean, np.float32)[:, None, None]
    std = np.asarray(sm.torch.std, np.float32)[:, None, None]
    cases: list[Case] = []
    for i, (scene, concepts) in enumerate(scenes):
        crop, masks = scene.image, concepts.masks
        evaluator = MaskedEvaluator(sm.engine, crop, masks, baseline="black")
        full_logits = evaluator.evaluate_full().logits[0]
        target = int(np.argmax(full_logits))
        x = torch.from_numpy(np.ascontiguousarray(sm.torch.image_norm(crop).numpy()))[None]
        base = torch.from_numpy(np.broadcast_to(-mean / std, x.shape[1:]).copy())[None]
        case = Case(
            i,
            crop,
            masks,
            _segments(masks),
            target,
            float(softmax(full_logits[None])[0, target]),
            x,
            base,
            evaluator,
        )
        cases.append(case)

    # Untimed: both backends once, so no row pays for first-call set-up.
    with torch.no_grad():
        model(cases[0].x)
    sm.engine.run(sm.engine.normalize(cases[0].crop[None]))
    model.images = 0

    stats: dict[tuple[str, str], RowStats] = {(EXACT_ROW, "all 2^N coalitions"): RowStats()}
    for peer in peers:
        stats[(peer.name, peer.setting)] = RowStats()
    libs: dict[tuple[str, str], str] = {(EXACT_ROW, "all 2^N coalitions"): "eac.kernels.shapley"}
    infos: dict[str, Any] = {}

    for case in cases:
        opts.log(f"peers: scene {case.index + 1}/{len(cases)} ({case.n} concepts)")
        # ground truth: every coalition through the ONNX classifier
        ex_stats = stats[(EXACT_ROW, "all 2^N coalitions")]
        engine.images = 0
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            exact_eval = MaskedEvaluator(
                engine, case.crop, case.masks, baseline="black", batch_size=batch
            )
            case.exact = exact_values(exact_eval, case.target)
            seconds = time.perf_counter() - t0
        _record(
            ex_stats,
            case,
            case.exact,
            seconds,
            engine.images,
            engine.images,
            (mem.peak - mem.baseline) / _MIB,
            f"all {2**case.n} coalitions, ONNX classifier",
            insertion_deletion,
        )
        for peer in peers:
            key = (peer.name, peer.setting)
            libs[key] = peer.library
            if case.index == 0:
                for _ in range(opts.warmup):
                    peer.run(case, peer.kwargs(case))
            timings, counted = [], 0
            values, info = None, {}
            peak_rise = 0.0
            for _ in range(max(opts.repeat, 1)):
                engine.images = 0
                model.images = 0
                with PeakMemory() as mem:
                    t0 = time.perf_counter()
                    values, info = peer.run(case, peer.kwargs(case))
                    timings.append(time.perf_counter() - t0)
                counted = engine.images if peer.backend == "onnx" else model.images
                peak_rise = max(peak_rise, (mem.peak - mem.baseline) / _MIB)
            seconds = float(np.median(timings))
            reported = info.get("reported_evaluations", counted)
            if peer.name == EAC_ROW and peer.setting == SETTING_DEFAULT:
                case.budget = int(reported)
            _record(
                stats[key],
                case,
                values,
                seconds,
                counted,
                reported,
                peak_rise,
                peer.describe(case),
                insertion_deletion,
            )
            infos.setdefault(f"{peer.name} [{peer.setting}]", []).append(
                {k: v for k, v in info.items() if k != "reported_evaluations"}
            )

    summary: dict[str, dict[str, Any]] = {}
    eac_seconds = _mean(stats[(EAC_ROW, SETTING_DEFAULT)].seconds)
    header = [
        "peer",
        "library",
        "setting",
        "s / image",
        "evaluations / image",
        "peak RSS rise MB",
        "Spearman vs exact",
        f"top-{TOP_K}",
        "insertion ↑",
        "deletion ↓",
        "time / eac",
    ]
    rows, settings_rows = [], []
    for (name, setting), st in stats.items():
        label = f"{name} [{setting}]"
        s = {
            "library": libs[(name, setting)],
            "setting": setting,
            "seconds": _mean(st.seconds),
            "evaluations": _mean(st.evaluations),
            "reported_evaluations": _mean(st.reported),
            "peak_rss_rise_mb": float(max(st.rss_rise_mb)) if st.rss_rise_mb else float("nan"),
            "spearman": _mean(st.spearman),
            f"top{TOP_K}": _mean(st.topk),
            "insertion": _mean(st.insertion),
            "deletion": _mean(st.deletion),
            "per_image": {
                "seconds": st.seconds,
                "evaluations": st.evaluations,
                "reported": st.reported,
                "spearman": st.spearman,
                "insertion": st.insertion,
                "deletion": st.deletion,
            },
            "settings": st.settings,
            "constant_value_images": st.constant,
        }
        s["time_over_eac"] = _ratio(s["seconds"], eac_seconds)
        summary[label] = s
        rho = _f3(s["spearman"]) + (f" ({st.constant} constant)" if st.constant else "")
        rows.append(
            [
                name,
                s["library"],
                setting,
                _fs(s["seconds"]),
                f"{s['evaluations']:.0f}",
                f"{s['peak_rss_rise_mb']:.0f}",
                rho,
                _f2(s[f"top{TOP_K}"]),
                _f2(s["insertion"]),
                _f2(s["deletion"]),
                _fx(s["time_over_eac"]),
            ]
        )
        settings_rows.append(
            [
                name,
                setting,
                st.settings[0]
                if len(set(st.settings)) == 1
                else f"{st.settings[0]} (image 1; varies per image)",
            ]
        )
    n_list = [c.n for c in cases]
    title = (
        f"eac vs the libraries you would use otherwise: {len(cases)} scenes, "
        f"{min(n_list)}–{max(n_list)} concepts, same classifier (torch for the libraries, "
        "its ONNX export for eac), same concepts"
    )
    tables = [
        (title, header, rows),
        ("settings of each row", ["peer", "setting", "settings"], settings_rows),
    ]
    if notes:
        tables.append(("notes", ["what", "note"], [[k, v] for k, v in notes.items()]))
    versions = {
        name: str(getattr(mod, "__version__", "unknown")) for name, mod in libraries.items()
    }
    settings = {
        "classifier": sm.description,
        "classifier_folder": str(sm.folder),
        "scenes": len(cases),
        "concepts_per_scene": n_list,
        "targets": [c.target for c in cases],
        "batch_size": batch,
        "baseline": "black",
        "seed": opts.seed,
        "warmup_per_peer": opts.warmup,
        "repeat": opts.repeat,
        "budget_per_scene": [c.budget for c in cases],
        "peer_versions": versions,
        "notes": notes,
        "eac_row": f"{EAC_ROW} [{SETTING_DEFAULT}]",
    }
    return BenchReport(
        workload=opts.workload,
        quick=opts.quick,
        command=opts.command,
        sides={},
        ratios={},
        machine=machine_info(opts.threads),
        provider=sm.engine.provider,
        settings=settings,
        extra={"summary": summary, "peer_info": infos},
        tables=tables,
    )


def _record(
    st: RowStats,
    case: Case,
    values: np.ndarray,
    seconds: float,
    counted: int,
    reported: int,
    memory: float,
    settings: str,
    insertion_deletion: Callable,
) -> None:
    values = np.asarray(values, np.float64).reshape(-1)
    if values.shape != (case.n,):
        raise BenchError(f"a peer returned {values.shape} values for {case.n} concepts")
    rise = float(memory)
    agree = ranking_agreement(values, case.exact)
    st.constant += int(np.ptp(values) == 0)
    ranking = np.argsort(-values, kind="stable")
    auc = insertion_deletion(case.evaluator, ranking, case.target, full_prob=case.full_prob)
    st.seconds.append(float(seconds))
    st.evaluations.append(float(counted))
    st.reported.append(float(reported))
    st.rss_rise_mb.append(float(max(rise, 0.0)))
    st.spearman.append(agree["spearman"])
    st.topk.append(agree[f"top{TOP_K}"])
    st.insertion.append(auc["insertion"])
    st.deletion.append(auc["deletion"])
    st.settings.append(settings)


def _fs(s: float) -> str:
    if math.isnan(s):
        return "nan"
    return f"{s:.3f}" if s < 1 else f"{s:.2f}"


def _f3(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def _f2(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.2f}"


def _fx(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.1f}×"
