"""Bench classifiers whose prediction depends on the image: the final layer fitted on generated scenes.

No ImageNet weights can be downloaded here, and with random weights a classifier's class
probabilities barely move when concepts are masked: every value is near zero, nothing is ever
resolved, and ``eac`` always runs to its evaluation cap — the worst case, not the usual one.
This module keeps a bench network's random convolutions (so the compute is unchanged: ResNet-50
4.1 GMAC per image, MobileNetV3-Large 0.22) and fits its final layer on the penultimate features
of generated scenes (:mod:`eac.engine.scenes`) to answer a question such features can answer:
*is the scene's red object visible?* (class 0 ``"red object"``, class 1 ``"no red object"``).

A random trunk first needs one of the initialisations training starts from, or its pooled
features carry nothing a linear layer can read (measured: a probe on a plain random ResNet-50
stays at the majority class; a random MobileNetV3's features are of order 1e-9):

* ResNets: torchvision's ``zero_init_residual`` — each residual block starts as the identity,
  so the stem and the stride-2 projections reach the features (:func:`zero_init_residual_`) —
  then the features scaled to a trained ResNet's magnitude (:func:`scale_features_`), so the
  fitted layer's weights are of a trained head's size and the reference's PIE surrogate, which
  maps concepts into that head, does not start saturated;
* MobileNetV3: batch-norm statistics measured on :data:`BN_SCENES` scenes
  (:func:`recalibrate_batch_norm_`).

The training images look like EAC's masked evaluations: :data:`MASKED_FRACTION` of them keep a
random subset of the scene's concepts (objects and background tiles, each kept with probability
:data:`KEEP_PROBABILITY`) and black out the rest; the label says whether the red object survived.
Each image goes through the classifier's own crop (resize 256, centre 224), as the explained
image does. Features come from ONNX Runtime on an export of the prepared trunk, the layer is
fitted with torch (logistic regression, :func:`fit_layer`), then the network is exported again
with that layer — from a module factory and a checkpoint, so the PyTorch reference rebuilds the
very same network. Accuracy on held-out scenes is recorded beside the folder and printed in the
bench's settings.

Explaining a generated scene with such a classifier, the concepts over the red object carry the
prediction and the rest carry little: values are concentrated the way a trained classifier's
are, so ``eac``'s stopping rule can act as it would on a real model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import mobilenet, models

#: Class names of the fitted layer, in class-index order.
LABELS = ("red object", "no red object")
#: Fraction of training images shown masked, and the chance each concept survives in one.
MASKED_FRACTION = 0.5
KEEP_PROBABILITY = 0.5
#: Background tiles per side of the masked training images' concepts (drawn from this range).
MIN_BACKGROUND_CELLS, MAX_BACKGROUND_CELLS = 1, 3
#: Scenes the layer is fitted on, and the share of them held out to measure its accuracy.
FIT_SCENES = 1200
HELD_OUT_FRACTION = 0.2
#: Seed of the training scenes (recorded in the folder's record).
SCENE_SEED = 7
#: Logistic regression: full-batch Adam steps, learning rate and L2 weight decay (strong enough
#: that 1000-odd scenes do not overfit 2048 standardised features).
FIT_STEPS = 400
FIT_LR = 1e-2
FIT_WEIGHT_DECAY = 1e-2
#: Largest logit margin (class 0 − class 1, 95th percentile of |margin| on the training scenes) the
#: fitted layer may give; a larger one is scaled down (a temperature: the predicted class is
#: unchanged). A guard: on nearly separable scenes logistic regression keeps growing the weights,
#: and margins in the hundreds would saturate every softmax (masking would barely move the
#: probability); a trained classifier's confident margins are of order ten. The temperature
#: applied is kept in the head's record.
MAX_MARGIN = 10.0
MARGIN_PERCENTILE = 95
#: Largest |logit| difference allowed between the export and PyTorch on held-out scenes (the
#: classifier export check's own tolerance for logits).
EXPORT_ATOL = 1e-3
#: Guards the standardisation against constant features.
STD_FLOOR = 1e-6
#: Images per ONNX Runtime call while computing features.
FEATURE_BATCH = 32
RECORD_NAME = "scene_head.json"
#: Folder names under the cache root: the prepared trunk (features only, removed after the fit) and the result.
TRUNK_NAME, FINAL_NAME = "trunk", "classifier"
#: Scenes whose batch-norm statistics a MobileNetV3 trunk takes, and their seed (not the training scenes').
BN_SCENES = 64
BN_SEED = 8
#: Mean pooled feature a ResNet trunk is scaled to (the order of a trained torchvision ResNet-50's
#: penultimate activations). The zero-initialised random trunk's are about ten times smaller, so
#: the fitted layer's weights were ten times larger than a trained head's, and the reference's PIE
#: surrogate (a random N→D map into that head) started saturated: its softmax gave exactly 0 or 1,
#: its SGD could not move, and every reference value came out 0.
TRAINED_FEATURE_MEAN = 0.5


def resnet50_scenes_factory() -> nn.Module:
    """Factory of the ResNet-50 layout with a 2-class head (weights come from the checkpoint)."""
    return models.ResNet(models.RESNET50_LAYERS, len(LABELS))


def tiny_resnet_scenes_factory() -> nn.Module:
    """Factory of the tiny ResNet layout with a 2-class head."""
    return models.ResNet(models.TINY_LAYERS, len(LABELS), width=models.TINY_WIDTH)


def mobilenet_scenes_factory() -> nn.Module:
    """Factory of the MobileNetV3-Large layout with a 2-class head."""
    return mobilenet.MobileNetV3(len(LABELS))


def tiny_mobilenet_scenes_factory() -> nn.Module:
    """Factory of the narrow MobileNetV3 layout with a 2-class head."""
    return mobilenet.MobileNetV3(len(LABELS), width=models.TINY_MOBILE_WIDTH)


#: Bench architecture → factory of its 2-class layout (``module:function``, recorded in the manifest).
FACTORIES = {
    "resnet50": "eac.bench.scene_head:resnet50_scenes_factory",
    "tiny": "eac.bench.scene_head:tiny_resnet_scenes_factory",
    "mobilenet_v3_large": "eac.bench.scene_head:mobilenet_scenes_factory",
    "tiny_mobile": "eac.bench.scene_head:tiny_mobilenet_scenes_factory",
}


@dataclass
class SceneHead:
    """A bench classifier with its final layer fitted on scenes.

    Attributes
    ----------
    folder : Path
        The exported classifier folder (2 classes, :data:`LABELS`).
    record : dict
        How it was fitted: architecture, scenes, held-out accuracy, class balance, seeds.
    """

    folder: Path
    record: dict[str, Any]

    @property
    def description(self) -> str:
        r = self.record
        return (f"bench {models.ARCH_NAMES.get(r['arch'], r['arch'])}: random convolutions (seed {r['trunk_seed']}; "
                f"{r['trunk']}), final layer fitted on {r['scenes']} generated scenes to tell whether the red object "
                f"is visible (held-out accuracy {r['held_out_accuracy']:.2f}, majority class "
                f"{r['majority_fraction']:.2f})")


def training_images(count: int, crop_hw: tuple[int, int], resize: int | None,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` scenes through the classifier's crop, half of them masked, and their labels.

    Returns
    -------
    images : ndarray of uint8, count×h×w×3
    labels : ndarray of int64, count
        0 when the red object is visible, 1 when it was masked out.
    """
    from ..engine.images import apply_frame, resize_crop_frame
    from ..engine.scenes import make_scene, scene_concepts

    side = max(crop_hw)
    images = np.empty((count, *crop_hw, 3), np.uint8)
    labels = np.zeros(count, np.int64)
    for i in range(count):
        scene = make_scene(rng, side)
        image = scene.image
        if rng.random() < MASKED_FRACTION:
            cells = int(rng.integers(MIN_BACKGROUND_CELLS, MAX_BACKGROUND_CELLS + 1))
            concepts = scene_concepts(scene, background_cells=cells)
            keep = rng.random(len(concepts)) < KEEP_PROBABILITY
            union = np.any(concepts.masks[keep], axis=0) if keep.any() else np.zeros(image.shape[:2], bool)
            image = np.where(union[..., None], image, 0).astype(np.uint8)
            labels[i] = 0 if keep[0] else 1
        images[i] = apply_frame(image, resize_crop_frame(image.shape[:2], resize, crop_hw))
    return images, labels


def fit_layer(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression of ``labels`` (M) on ``features`` (M×D): weight K×D and bias K on raw features.

    The features are centred and divided by one scale (their overall standard deviation) for the
    fit; the returned layer applies that itself (``W' = W / σ``, ``b' = b − W' μ``), so it replaces
    the network's final layer as is. One scale for all features, not one per feature: per-feature
    scaling would blow up the weights of nearly constant features, and a head with huge weights
    saturates the softmax of any surrogate built on it (the reference's PIE), which a trained
    classifier's head does not.
    """
    mean = features.mean(0)
    std = max(float(features.std()), STD_FLOOR)
    x = torch.from_numpy(((features - mean) / std).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    layer = nn.Linear(x.shape[1], len(LABELS))
    with torch.no_grad():  # a convex problem: start from zero, full-batch steps, deterministic
        layer.weight.zero_()
        layer.bias.zero_()
    opt = torch.optim.Adam(layer.parameters(), lr=FIT_LR, weight_decay=FIT_WEIGHT_DECAY)
    for _ in range(FIT_STEPS):
        loss = nn.functional.cross_entropy(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = layer.weight.detach().numpy().astype(np.float64) / std
    b = layer.bias.detach().numpy().astype(np.float64) - w @ mean
    return w.astype(np.float32), b.astype(np.float32)


def limit_margin(weight: np.ndarray, bias: np.ndarray, features: np.ndarray,
                 limit: float = MAX_MARGIN) -> tuple[np.ndarray, np.ndarray, float]:
    """The layer (weight K×D, bias K) scaled down so its margins on ``features`` (M×D) stay within ``limit``.

    The margin is logit 0 − logit 1; its :data:`MARGIN_PERCENTILE`-th percentile in absolute
    value is brought to ``limit`` when above it (weight and bias divided by the same
    temperature ≥ 1, so every prediction keeps its class). Returns the layer and the temperature.
    """
    logits = features @ weight.T + bias
    spread = float(np.percentile(np.abs(logits[:, 0] - logits[:, 1]), MARGIN_PERCENTILE))
    temperature = max(spread / limit, 1.0)
    return (weight / temperature).astype(np.float32), (bias / temperature).astype(np.float32), temperature


def check_export(model: nn.Module, classifier: Any, images: np.ndarray, atol: float = EXPORT_ATOL) -> float:
    """Largest |logit| difference of the ONNX export and the PyTorch ``model`` on ``images`` (M×h×w×3 uint8).

    Raises :class:`eac.bench.models.BenchModelError` above ``atol``.
    """
    x = classifier.normalize(images)
    got = np.asarray(classifier.run(x).logits, np.float64)
    with torch.no_grad():
        want = model(torch.from_numpy(np.ascontiguousarray(x))).double().numpy()
    worst = float(np.abs(got - want).max())
    if worst > atol:
        raise models.BenchModelError(f"scene head export: logits differ from PyTorch by {worst:.3g} on held-out "
                                     f"scenes (tolerance {atol:g})")
    return worst


def _features(classifier: Any, images: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(images), FEATURE_BATCH):
        batch = classifier.normalize(images[start : start + FEATURE_BATCH])
        out.append(np.asarray(classifier.run(batch, features=True).features, np.float32))
    return np.concatenate(out)


def zero_init_residual_(model: nn.Module) -> nn.Module:
    """torchvision's ``zero_init_residual``: the last batch norm of every Bottleneck scaled to 0.

    Each residual block then starts as the identity (its convolutions still run: the compute is
    unchanged); what reaches the pooled features is the stem and the stride-2 projections, a
    shallow random network whose features keep the image's colours. Without it the pooled
    features of a random 16-block ResNet-50 do not tell a visible red object from a masked one
    (a linear probe stays at the majority class).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, models.Bottleneck):
                module.bn3.weight.zero_()
    return model


def recalibrate_batch_norm_(model: nn.Module, images: torch.Tensor, batch: int = FEATURE_BATCH) -> nn.Module:
    """Set every batch norm's running statistics to those of ``images`` (B×3×H×W, normalised), eval mode after.

    What training would have left there. A random MobileNetV3's activations vanish through its
    depthwise layers (torchvision's fan-out initialisation; pooled features of order 1e-9 on
    the scenes); statistics measured on the data undo that.
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over every batch
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            model(images[start : start + batch])
    return model.eval()


def scale_features_(model: nn.Module, images: torch.Tensor, target: float = TRAINED_FEATURE_MEAN) -> float:
    """Scale a :func:`zero_init_residual_` ResNet's pooled features so their mean on ``images`` is ``target``.

    With every residual branch zeroed, the features are the ReLU of the last stage's first block
    (its projection plus its zeroed branch), passed on unchanged by the identity blocks after it;
    ReLU is positively homogeneous, so scaling that block's two last batch norms (weight and bias)
    by ``s`` scales the features by exactly ``s``. ``images``: B×3×H×W normalised. Returns ``s``.
    """
    with torch.no_grad():
        current = float(model.features(images).mean())
        scale = target / max(current, STD_FLOOR)
        block = model.layer4[0]
        for bn in (block.bn3, block.downsample[-1]):
            bn.weight.mul_(scale)
            bn.bias.mul_(scale)
    return scale


def _normalised(images: np.ndarray) -> torch.Tensor:
    """M×h×w×3 uint8 crops → M×3×h×w float32, ImageNet-normalised."""
    mean, std = np.asarray(models.IMAGENET_MEAN, np.float32), np.asarray(models.IMAGENET_STD, np.float32)
    x = ((images.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def prepared_trunk(arch: str, calibration: np.ndarray) -> tuple[nn.Module, str]:
    """The bench network ``arch`` (random weights) made usable for a fitted final layer, and how.

    ResNets: :func:`zero_init_residual_`, then :func:`scale_features_` on ``calibration``.
    MobileNetV3: :func:`recalibrate_batch_norm_` on ``calibration`` (M×h×w×3 uint8 crops). The
    final layer is replaced by a zeroed 2-class one.
    """
    model = models.CLASSIFIERS[arch][1]()
    if arch in models.MOBILE_ARCHS:
        recalibrate_batch_norm_(model, _normalised(calibration))
        how = f"batch-norm statistics measured on {len(calibration)} generated scenes"
    else:
        zero_init_residual_(model.eval())
        scale = scale_features_(model, _normalised(calibration))
        how = (f"torchvision's zero_init_residual (each residual block starts as the identity), features scaled "
               f"×{scale:.3g} to a trained ResNet's mean of {TRAINED_FEATURE_MEAN:g} on generated scenes")
    _set_head(model, arch, np.zeros((len(LABELS), _head(model, arch).in_features), np.float32),
              np.zeros(len(LABELS), np.float32))
    return model.eval(), how


def _head(model: nn.Module, arch: str) -> nn.Linear:
    return model.get_submodule(models.head_layer(arch))


def _set_head(model: nn.Module, arch: str, weight: np.ndarray, bias: np.ndarray) -> None:
    new = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(weight))
        new.bias.copy_(torch.from_numpy(bias))
    parent_name, _, leaf = models.head_layer(arch).rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)


def _export(model: nn.Module, arch: str, root: Path, name: str, validate: bool) -> Path:
    """Export ``model`` (2-class layout) through its factory and a checkpoint under ``root``."""
    from ..export.classifier import export_classifier

    checkpoint = root / f"{name}.pt"
    torch.save(model.state_dict(), str(checkpoint))
    labels_path = root / "labels.txt"
    labels_path.write_text("\n".join(LABELS) + "\n")
    folder = root / name
    export_classifier(out=str(folder), module=FACTORIES[arch], checkpoint=str(checkpoint),
                      input_size=models.CROP, resize=models.RESIZE, mean=models.IMAGENET_MEAN,
                      std=models.IMAGENET_STD, channel_order="RGB", labels=str(labels_path), validate=validate)
    return folder


def scene_head_classifier(arch: str, scenes: int = FIT_SCENES, log=None) -> SceneHead:
    """The bench network ``arch`` with its final layer fitted on ``scenes`` generated scenes (cached).

    Parameters
    ----------
    arch : str
        A bench architecture (:data:`eac.bench.models.CLASSIFIERS`).
    scenes : int
        Training plus held-out scenes.
    log : callable, optional
        Receives progress lines.

    Returns
    -------
    SceneHead
    """
    from ..engine.classifier import Classifier

    if arch not in FACTORIES:
        raise models.BenchModelError(f"no scene head for bench classifier {arch!r}; choose from {', '.join(FACTORIES)}")
    key = models._fingerprint("scenehead", arch, scenes, SCENE_SEED, models.BENCH_SEED, FIT_STEPS, FIT_WEIGHT_DECAY,
                              models._source_digest("eac.bench.scene_head"), models._source_digest("eac.engine.scenes"),
                              models._source_digest("eac.export.classifier"))
    root = models.cache_dir() / f"scene-head-{arch}-{key}"
    folder, record_path = root / FINAL_NAME, root / RECORD_NAME
    if (folder / "manifest.json").is_file() and record_path.is_file():
        return SceneHead(folder, json.loads(record_path.read_text()))
    if log is not None:
        log(f"fitting the final layer of the bench {arch} on {scenes} generated scenes (cached)...")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = np.random.default_rng(SCENE_SEED)
    images, labels = training_images(scenes, (models.CROP, models.CROP), models.RESIZE, rng)
    calibration, _ = training_images(min(BN_SCENES, scenes), (models.CROP, models.CROP), models.RESIZE,
                                     np.random.default_rng(BN_SEED))
    model, prepared = prepared_trunk(arch, calibration)
    trunk = Classifier.from_folder(_export(model, arch, root, TRUNK_NAME, validate=False))
    feats = _features(trunk, images)
    held = max(1, round(HELD_OUT_FRACTION * scenes))
    weight, bias = fit_layer(feats[:-held], labels[:-held])
    weight, bias, temperature = limit_margin(weight, bias, feats[:-held])
    logits = feats[-held:] @ weight.T + bias
    accuracy = float(np.mean(np.argmax(logits, 1) == labels[-held:]))
    majority = float(max(np.mean(labels[-held:] == 0), np.mean(labels[-held:] == 1)))
    _set_head(model, arch, weight, bias)
    # Checked on held-out scenes, not on the export's random-noise input: far outside the scenes a
    # fitted MobileNetV3 head gives logits in the hundreds, where float32 rounding alone exceeds
    # the export check's absolute tolerance.
    final = _export(model, arch, root, FINAL_NAME, validate=False)
    check_export(model, Classifier.from_folder(final), images[-held:])
    shutil.rmtree(root / TRUNK_NAME)
    (root / f"{TRUNK_NAME}.pt").unlink()
    record = {"arch": arch, "scenes": scenes, "held_out": held, "held_out_accuracy": accuracy,
              "majority_fraction": majority, "scene_seed": SCENE_SEED, "trunk_seed": models.BENCH_SEED,
              "trunk": prepared, "labels": list(LABELS), "masked_fraction": MASKED_FRACTION,
              "keep_probability": KEEP_PROBABILITY, "logit_temperature": temperature}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return SceneHead(folder, record)
