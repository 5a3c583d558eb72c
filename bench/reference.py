"""Our faithful re-implementation of the reference EAC pipeline (PyTorch eager).

This is the baseline every speed-up of eac is quoted against, written from the
method (see ``MISSION.md``, "The method, as the reference does it") and from
how the authors' code is structured. It runs the pipeline the way its authors
run it — neither slowed down artificially nor quietly improved:

1. **Concepts**: segment-anything's own ``SamAutomaticMaskGenerator`` on the
   224×224 crop (32×32 point grid, 64 points per decoder batch, predicted-IoU
   ≥ 0.88, stability ≥ 0.95 with offset 1.0, box NMS 0.7, no crop layers).
2. **Evaluations**: 2500 coalitions b ∈ {0,1}^N with Bernoulli(0.5) bits. As
   in the reference, the union mask of every coalition is built with a Python
   loop (summing the chosen masks), *all* masked images are materialised at
   once (image × mask, black outside, before normalisation), each is converted
   and normalised one by one (``ToTensor`` + ``Normalize``), and a
   ``DataLoader`` feeds the classifier in batches of 500. The penultimate
   features and the softmax probability of the explained class y (the top-1
   on the whole crop) are recorded.
3. **PIE surrogate**: f'(b) = softmax(fc(W·b + c))[y] with the classifier's
   own ``fc`` (not in the optimiser) and a learned ``nn.Linear`` N→D; torch
   SGD (lr 0.008, momentum 0.9), mini-batches of 100 shuffled each epoch,
   binary cross-entropy against the recorded probabilities, 50 epochs; like
   the reference, the first N recorded coalitions are left out of training.
4. **Values**: for each concept i, 50 000 fresh Bernoulli(0.5) coalitions;
   the value is the mean of f'(b, i=1) − f'(b, i=0) (a Banzhaf-type value).

Every random draw comes from generators seeded by :attr:`ReferenceSettings.seed`
(the authors use the global NumPy/torch generators; the distributions are the
same), so two runs give identical values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .harness import BenchError

#: The reference's constants (MISSION.md, "The method, as the reference does it").
N_COALITIONS = 2500
EVAL_BATCH = 500
PIE_LR = 0.008
PIE_MOMENTUM = 0.9
PIE_BATCH = 100
PIE_EPOCHS = 50
MC_SAMPLES = 50_000
COALITION_P = 0.5
#: SamAutomaticMaskGenerator settings of the reference.
SAM_POINTS_PER_SIDE = 32
SAM_POINTS_PER_BATCH = 64
SAM_PRED_IOU_THRESH = 0.88
SAM_STABILITY_THRESH = 0.95
SAM_STABILITY_OFFSET = 1.0
SAM_BOX_NMS_THRESH = 0.7
SAM_CROP_LAYERS = 0
#: Box-NMS threshold that suppresses nothing (NMS drops boxes with IoU *above* it).
KEEP_ALL_NMS = 1.0
#: Pixel scale of ``ToTensor`` (uint8 → [0, 1]).
PIXEL_SCALE = 255.0


@dataclass(frozen=True)
class ReferenceSettings:
    """Settings of the reference explain stage (defaults: the authors' values).

    Quick benchmark runs reduce ``n_coalitions``, ``epochs`` and
    ``mc_samples``; the procedure stays the same.
    """

    n_coalitions: int = N_COALITIONS
    eval_batch: int = EVAL_BATCH
    lr: float = PIE_LR
    momentum: float = PIE_MOMENTUM
    sgd_batch: int = PIE_BATCH
    epochs: int = PIE_EPOCHS
    mc_samples: int = MC_SAMPLES
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TorchClassifier:
    """A PyTorch classifier split the way the reference uses it.

    Attributes
    ----------
    features : callable
        B×3×H×W normalised float images → B×D penultimate features (for a
        torchvision ResNet: everything up to and including ``avgpool``).
    fc : nn.Module
        The last layer, D → K logits (the PIE surrogate's frozen head).
    mean, std : tuple of 3 float
        Normalisation, 0-1 scale, RGB.
    """

    features: Callable[[torch.Tensor], torch.Tensor]
    fc: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_module(cls, module: nn.Module, mean, std, head: str = "fc") -> TorchClassifier:
        """Split a classifier into penultimate features and its head layer ``head``.

        A module with a ``features(x)`` *method* returning B×D (the bench
        ResNet) is used as is. Otherwise the features are the input of the head
        layer, captured with a forward hook while the whole model runs (the
        head's own cost is negligible next to the backbone's).
        """
        try:
            fc = module.get_submodule(head)
        except AttributeError:
            raise BenchError(f"the model has no head layer {head!r}") from None
        module.eval()
        method = getattr(type(module), "features", None)
        if callable(method) and not isinstance(module.features, nn.Module):
            features = module.features
        else:
            features = _HeadInput(module, fc)
        return cls(features=features, fc=fc, mean=tuple(map(float, mean)), std=tuple(map(float, std)))

    def image_norm(self, image: np.ndarray) -> torch.Tensor:
        """``ToTensor`` + ``Normalize`` of one H×W×3 uint8 image → 3×H×W float32."""
        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).contiguous().float().div(PIXEL_SCALE)
        mean = torch.as_tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.as_tensor(self.std, dtype=torch.float32)[:, None, None]
        return (t - mean) / std


class _HeadInput:
    """Penultimate features of any classifier: the input of its head, captured by a hook."""

    def __init__(self, module: nn.Module, head: nn.Module) -> None:
        self.module = module
        self.captured: torch.Tensor | None = None
        head.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.captured = args[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.captured = None
        self.module(x)
        if self.captured is None:
            raise BenchError("the head layer did not run in the model's forward pass")
        out, self.captured = self.captured, None
        return out.reshape(out.shape[0], -1)


@dataclass
class ReferenceExplanation:
    """The reference's output for one image.

    Attributes
    ----------
    values : ndarray, N
        Per-concept Monte-Carlo values of the PIE surrogate.
    ranking : ndarray of int, N
        Concept indices by decreasing value.
    target : int
        Explained class (top-1 on the whole crop).
    probability : float
        Its softmax probability on the whole crop.
    n_evaluations : int
        Classifier evaluations (the whole crop + the coalitions).
    timings : dict of str to float
        Seconds of "evaluations", "fit" and "values".
    losses : list of float
        Mean training loss per PIE epoch.
    """

    values: np.ndarray
    ranking: np.ndarray
    target: int
    probability: float
    n_evaluations: int
    timings: dict[str, float]
    losses: list[float] = field(default_factory=list)
    coalition_probabilities: np.ndarray | None = None


class _PIE(nn.Module):
    """The surrogate: a learned N→D linear map followed by the model's own head."""

    def __init__(self, n_concepts: int, feature_dim: int, fc: nn.Module, generator: torch.Generator) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(n_concepts, feature_dim))
        linear = self.model[0]
        bound = 1.0 / max(n_concepts, 1) ** 0.5  # nn.Linear's default initialisation, from our generator
        with torch.no_grad():
            linear.weight.copy_((torch.rand(linear.weight.shape, generator=generator) * 2 - 1) * bound)
            linear.bias.copy_((torch.rand(linear.bias.shape, generator=generator) * 2 - 1) * bound)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.model(x))

    def forward_feat(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ReferenceEAC:
    """The reference explain stage (evaluations, PIE fit, Monte-Carlo values).

    Parameters
    ----------
    classifier : TorchClassifier
        The PyTorch model, split into features and head.
    settings : ReferenceSettings
        The reference's constants (and the seed).
    """

    def __init__(self, classifier: TorchClassifier, settings: ReferenceSettings | None = None) -> None:
        self.classifier = classifier
        self.settings = settings or ReferenceSettings()

    # -- stage 3 ---------------------------------------------------------------------------------
    def predict(self, image: np.ndarray) -> tuple[int, float]:
        """Top-1 class and its probability on the whole crop (one evaluation)."""
        with torch.no_grad():
            x = self.classifier.image_norm(image)[None]
            probs = torch.softmax(self.classifier.fc(self.classifier.features(x)), dim=1)[0]
        target = int(torch.argmax(probs))
        return target, float(probs[target])

    def evaluate(self, image: np.ndarray, masks: np.ndarray, target: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Draw the coalitions and run the classifier on every masked image.

        Returns
        -------
        coalitions : ndarray of bool, n_coalitions×N
        features : Tensor, n_coalitions×D
        probabilities : Tensor, n_coalitions (softmax probability of ``target``)
        """
        s = self.settings
        n = masks.shape[0]
        coalitions = rng.binomial(1, COALITION_P, size=(s.n_coalitions, n)).astype(bool)
        # The reference builds each coalition's union mask in a Python loop and
        # materialises every masked image before normalising them one by one.
        union = np.array([masks[b].sum(0) for b in coalitions]).astype(bool)
        masked = image[None] * union[..., None]
        batch_img = [self.classifier.image_norm(masked[i]) for i in range(masked.shape[0])]
        loader = DataLoader(dataset=batch_img, batch_size=s.eval_batch, shuffle=False)
        feats, probs = [], []
        for x in loader:
            with torch.no_grad():
                f = self.classifier.features(x)
                f = f.reshape(f.shape[0], -1)
                feats.append(f)
                probs.append(torch.softmax(self.classifier.fc(f), dim=1)[:, target])
        return coalitions, torch.cat(feats), torch.cat(probs)

    # -- stage 4 ---------------------------------------------------------------------------------
    def fit(self, coalitions: np.ndarray, features: torch.Tensor, probabilities: torch.Tensor, target: int,
            generator: torch.Generator) -> tuple[_PIE, list[float]]:
        """Train the PIE surrogate with torch SGD and BCE, as the reference does."""
        s = self.settings
        n = coalitions.shape[1]
        x_all = torch.tensor(coalitions.tolist(), dtype=torch.float)
        data = [[x, y] for x, y in zip(x_all, probabilities)]
        net = _PIE(n, features.shape[1], self.classifier.fc, generator)
        optimizer = torch.optim.SGD(net.model.parameters(), lr=s.lr, momentum=s.momentum)
        loss_fn = nn.BCELoss()
        # As in the reference, the first N coalitions are not used for training.
        loader = DataLoader(dataset=data[n:], batch_size=s.sgd_batch, shuffle=True, generator=generator)
        losses = []
        for _ in range(s.epochs):
            total, count = 0.0, 0
            for x, y in loader:
                pred = torch.softmax(net(x), dim=1)[:, target]
                optimizer.zero_grad()
                loss = loss_fn(pred, y)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * x.shape[0]
                count += x.shape[0]
            losses.append(total / max(count, 1))
        net.eval()
        return net, losses

    def values(self, net: _PIE, n: int, target: int, generator: torch.Generator) -> np.ndarray:
        """The per-concept Monte-Carlo loop: mean of f'(b, i=1) − f'(b, i=0)."""
        mc = self.settings.mc_samples
        out = []
        for i in range(n):
            b_on = torch.bernoulli(torch.full((mc, n), COALITION_P), generator=generator)
            b_off = b_on.clone()
            b_on[:, i] = 1
            b_off[:, i] = 0
            on, off = net.forward_feat(b_on), net.forward_feat(b_off)
            with torch.no_grad():
                diff = torch.softmax(net.fc(on), dim=1)[:, target] - torch.softmax(net.fc(off), dim=1)[:, target]
            out.append(float(diff.detach().sum()) / mc)
        return np.asarray(out, dtype=np.float64)

    # -- all stages ------------------------------------------------------------------------------
    def explain(self, image: np.ndarray, masks: np.ndarray, target: int | None = None) -> ReferenceExplanation:
        """Explain the classifier's decision on ``image`` with the concepts ``masks``.

        Parameters
        ----------
        image : ndarray of uint8, H×W×3
            The crop the classifier sees (RGB).
        masks : ndarray of bool, N×H×W
            Concept masks in the crop.
        target : int, optional
            Class to explain (default: top-1 on the whole crop).
        """
        image = np.asarray(image)
        masks = np.asarray(masks, dtype=bool)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise BenchError(f"the reference needs an H×W×3 uint8 image, got {image.shape} {image.dtype}")
        if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
            raise BenchError(f"masks {masks.shape} do not match the image {image.shape[:2]}")
        if masks.shape[0] == 0:
            raise BenchError("the reference needs at least one concept")
        s = self.settings
        rng = np.random.default_rng(s.seed)
        gen = torch.Generator().manual_seed(s.seed)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        top, prob = self.predict(image)
        y = top if target is None else int(target)
        if target is not None:
            prob = self._probability(image, y)
        coalitions, feats, probs = self.evaluate(image, masks, y, rng)
        timings["evaluations"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        net, losses = self.fit(coalitions, feats, probs, y, gen)
        timings["fit"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        vals = self.values(net, masks.shape[0], y, gen)
        timings["values"] = time.perf_counter() - t0
        for p in self.classifier.fc.parameters():  # the reference leaves gradients in the model's head
            p.grad = None
        return ReferenceExplanation(
            values=vals, ranking=np.argsort(-vals, kind="stable"), target=y, probability=prob,
            n_evaluations=1 + s.n_coalitions, timings=timings, losses=losses,
            coalition_probabilities=probs.numpy().copy(),
        )

    def _probability(self, image: np.ndarray, target: int) -> float:
        with torch.no_grad():
            x = self.classifier.image_norm(image)[None]
            return float(torch.softmax(self.classifier.fc(self.classifier.features(x)), dim=1)[0, target])


# --- concepts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamReferenceSettings:
    """Settings of segment-anything's automatic mask generator (reference defaults)."""

    points_per_side: int = SAM_POINTS_PER_SIDE
    points_per_batch: int = SAM_POINTS_PER_BATCH
    pred_iou_thresh: float = SAM_PRED_IOU_THRESH
    stability_score_thresh: float = SAM_STABILITY_THRESH
    stability_score_offset: float = SAM_STABILITY_OFFSET
    box_nms_thresh: float = SAM_BOX_NMS_THRESH
    crop_n_layers: int = SAM_CROP_LAYERS
    min_mask_region_area: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def keep_all(self) -> SamReferenceSettings:
        """The same settings with the IoU, stability and NMS filters off: every candidate is kept."""
        return replace(self, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=KEEP_ALL_NMS)


@dataclass
class ReferenceConcepts:
    """Masks from segment-anything's generator, in the order it returns them."""

    masks: np.ndarray
    scores: np.ndarray
    timings: dict[str, float]
    n_prompts: int


class ReferenceSamConcepts:
    """segment-anything's own ``SamAutomaticMaskGenerator``, timed per stage.

    Parameters
    ----------
    sam : segment_anything.modeling.Sam
        The model (random weights or a checkpoint; see :func:`eac.bench.models.build_sam`).
    settings : SamReferenceSettings
        Generator settings (reference defaults).

    Notes
    -----
    Stage times are taken by wrapping the predictor's ``set_image`` (the image
    encoder) and ``predict_torch`` (prompt encoder, mask decoder and the
    upsampling of every candidate to the image size) with a clock; the rest of
    ``generate`` (filtering, stability scores, NMS, RLE) is post-processing.
    The wrappers only read the clock.
    """

    def __init__(self, sam: Any, settings: SamReferenceSettings | None = None) -> None:
        from .models import import_segment_anything

        import_segment_anything()
        from segment_anything import SamAutomaticMaskGenerator

        self.settings = settings or SamReferenceSettings()
        s = self.settings
        self.generator = SamAutomaticMaskGenerator(
            sam, points_per_side=s.points_per_side, points_per_batch=s.points_per_batch,
            pred_iou_thresh=s.pred_iou_thresh, stability_score_thresh=s.stability_score_thresh,
            stability_score_offset=s.stability_score_offset, box_nms_thresh=s.box_nms_thresh,
            crop_n_layers=s.crop_n_layers, min_mask_region_area=s.min_mask_region_area,
            output_mode="binary_mask",
        )
        self._clock: dict[str, float] = {}
        predictor = self.generator.predictor
        predictor.set_image = self._timed(predictor.set_image, "encoder")
        predictor.predict_torch = self._timed(predictor.predict_torch, "decoder")

    def _timed(self, fn: Callable, name: str) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._clock[name] = self._clock.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    def generate(self, image: np.ndarray) -> ReferenceConcepts:
        """Run the generator on an H×W×3 uint8 RGB image."""
        self._clock = {}
        t0 = time.perf_counter()
        with torch.no_grad():
            records = self.generator.generate(np.ascontiguousarray(image))
        total = time.perf_counter() - t0
        h, w = image.shape[:2]
        masks = (np.stack([r["segmentation"] for r in records]).astype(bool) if records
                 else np.zeros((0, h, w), dtype=bool))
        scores = np.asarray([r["predicted_iou"] for r in records], dtype=np.float32)
        encoder = self._clock.get("encoder", 0.0)
        decoder = self._clock.get("decoder", 0.0)
        timings = {"encoder": encoder, "decoder": decoder, "postprocess": max(total - encoder - decoder, 0.0),
                   "total": total}
        return ReferenceConcepts(masks=masks, scores=scores, timings=timings,
                                 n_prompts=self.settings.points_per_side ** 2)
