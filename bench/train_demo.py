"""Train the small scene classifier shipped with eac (and used by tests and bench).

The classifier learns the class of the red shape in :mod:`eac.engine.scenes`.
Training also shows it masked scenes — random subsets of the scene's concepts
kept, the rest black, as EAC's masked evaluations look — and when the red shape
is masked out the target is the uniform distribution: no evidence, no class.
So the right explanation is known: the red shape's concept.

Reproduce the shipped model (about a minute on 2 CPU cores)::

    python -m eac.bench.train_demo --out engine/data/demo

"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.scenes import SHAPES, make_scene, scene_concepts

#: Probability that a training image is shown masked (some concepts blacked out).
MASKED_FRACTION = 0.5
#: Probability of keeping each concept in a masked training image.
KEEP_PROBABILITY = 0.5
#: Scene side of the shipped demo classifier (its network input).
DEMO_SIZE = 128
#: What the demo folder's manifest records as its checkpoint: a temporary file of the training command.
TEMPORARY_CHECKPOINT = "scene_cnn.pt (a temporary file of python -m eac.bench.train_demo)"
DEMO_CHANNELS = (16, 32, 64, 64)


class SceneCNN(nn.Module):
    """A small CNN: four conv blocks, global average pooling, one linear head ``fc``."""

    def __init__(self, num_classes: int = len(SHAPES), channels: tuple[int, ...] = DEMO_CHANNELS):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def demo_cnn() -> SceneCNN:
    """Factory used by ``eac export classifier --module eac.bench.train_demo:demo_cnn``."""
    return SceneCNN()


#: A lighter layout for test fixtures (trains in seconds on small scenes).
SMALL_CHANNELS = (8, 16, 32, 32)


def small_cnn() -> SceneCNN:
    """Factory of the lighter layout (``eac.bench.train_demo:small_cnn``)."""
    return SceneCNN(channels=SMALL_CHANNELS)


_FACTORIES = {DEMO_CHANNELS: "eac.bench.train_demo:demo_cnn", SMALL_CHANNELS: "eac.bench.train_demo:small_cnn"}


#: Preprocessing of the scene classifier: plain /255 and ImageNet statistics, no resize.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class TrainResult:
    model: SceneCNN
    accuracy: float
    masked_accuracy: float
    seconds: float
    #: Accuracy on its own training images and (one-hot) labels; computed only for permuted-label training.
    fit_accuracy: float | None = None


def make_dataset(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training images (n×3×size×size, normalised) and soft targets (n×K)."""
    k = len(SHAPES)
    images = np.empty((n, size, size, 3), np.uint8)
    targets = np.zeros((n, k), np.float32)
    for i in range(n):
        scene = make_scene(rng, size)
        image = scene.image
        target = np.eye(k, dtype=np.float32)[scene.label]
        if rng.random() < MASKED_FRACTION:
            concepts = scene_concepts(scene, background_cells=int(rng.integers(1, 4)))
            keep = rng.random(len(concepts)) < KEEP_PROBABILITY
            union = np.any(concepts.masks[keep], axis=0) if keep.any() else np.zeros((size, size), bool)
            image = np.where(union[..., None], image, 0).astype(np.uint8)
            if not keep[0]:
                target = np.full(k, 1.0 / k, np.float32)
        images[i] = image
        targets[i] = target
    return normalise(images), targets


def normalise(images: np.ndarray) -> np.ndarray:
    """B×H×W×3 uint8 → B×3×H×W float32 with the demo's mean/std."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def train(size: int = DEMO_SIZE, n_train: int = 3000, epochs: int = 8, batch: int = 64, lr: float = 3e-3,
          seed: int = 0, channels: tuple[int, ...] = DEMO_CHANNELS, verbose: bool = False,
          permute_labels: bool = False) -> TrainResult:
    """Train a :class:`SceneCNN` on freshly generated scenes; deterministic for a seed.

    ``permute_labels`` shuffles the targets across the training images (the data
    randomisation check of :mod:`eac.bench.sanity`): the labels keep their
    frequencies but no longer say anything about the images.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x, y = make_dataset(rng, n_train, size)
    if permute_labels:
        y = y[rng.permutation(len(y))]
    model = SceneCNN(channels=channels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * ((n_train + batch - 1) // batch))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=gen)
        total = 0.0
        for i in range(0, n_train, batch):
            idx = order[i : i + batch]
            logits = model(xt[idx])
            loss = torch.sum(-yt[idx] * torch.log_softmax(logits, 1), dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / n_train:.4f}")
    model.eval()
    acc, masked_acc = evaluate(model, np.random.default_rng(seed + 1), size)
    fit = fit_accuracy(model, xt, yt) if permute_labels else None
    return TrainResult(model, acc, masked_acc, time.perf_counter() - start, fit)


#: Images per forward pass when measuring the fit (memory only; the result does not depend on it).
FIT_BATCH = 256


@torch.no_grad()
def fit_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = FIT_BATCH) -> float:
    """Share of the training images with a one-hot target (n×K) whose class the model predicts."""
    hard = y.max(1).values == 1
    predicted = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((predicted[hard] == y[hard].argmax(1)).float().mean()) if hard.any() else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, rng: np.random.Generator, size: int, n: int = 400) -> tuple[float, float]:
    """Accuracy on clean scenes, and on masked scenes that keep the red shape."""
    scenes = [make_scene(rng, size) for _ in range(n)]
    labels = np.array([s.label for s in scenes])
    clean = normalise(np.stack([s.image for s in scenes]))
    masked_images = []
    for s in scenes:
        concepts = scene_concepts(s)
        keep = rng.random(len(concepts)) < KEEP_PROBABILITY
        keep[0] = True
        union = np.any(concepts.masks[keep], axis=0)
        masked_images.append(np.where(union[..., None], s.image, 0).astype(np.uint8))
    masked = normalise(np.stack(masked_images))
    acc = float((model(torch.from_numpy(clean)).argmax(1).numpy() == labels).mean())
    macc = float((model(torch.from_numpy(masked)).argmax(1).numpy() == labels).mean())
    return acc, macc


def export_folder(model: SceneCNN, out: str | Path, size: int, validate: bool = True) -> dict:
    """Write an eac classifier folder for a trained :class:`SceneCNN` (no resize, ``size`` crop)."""
    from ..engine.manifest import read_manifest, write_manifest
    from ..export.classifier import export_classifier

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "scene_cnn.pt"
        torch.save(model.state_dict(), ckpt)
        channels = tuple(m.out_channels for m in model.features if isinstance(m, nn.Conv2d))
        factory = _FACTORIES.get(channels)
        if factory is None:
            raise ValueError(f"no factory for channel layout {channels}; use one of {list(_FACTORIES)}")
        labels = Path(tmp) / "labels.txt"
        labels.write_text("\n".join(SHAPES) + "\n")
        export_classifier(
            out=str(out), module=factory, checkpoint=str(ckpt), input_size=size, resize=size,
            mean=MEAN, std=STD, channel_order="RGB", labels=str(labels), validate=validate,
        )
    # The checkpoint was a temporary file: record its name and where it came from, not a path that no longer exists
    # (and names the machine that trained it).
    recorded = read_manifest(out)
    recorded["source"]["checkpoint"]["path"] = TEMPORARY_CHECKPOINT
    write_manifest(out, recorded)
    return recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="classifier folder to write (replaced if it exists)")
    parser.add_argument("--size", type=int, default=DEMO_SIZE)
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = train(args.size, args.n_train, args.epochs, seed=args.seed, verbose=True)
    print(f"trained in {result.seconds:.0f}s: accuracy {result.accuracy:.3f}, "
          f"masked accuracy {result.masked_accuracy:.3f}")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    export_folder(result.model, out, args.size)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
