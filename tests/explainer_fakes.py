"""Small numpy classifiers with the runtime Classifier API, for explainer tests.

They need no model folder, run in microseconds, and their outputs are plain
functions of pixel regions, so ground truth can be computed by enumeration.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from eac.engine.concepts import Frame

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass
class Output:
    logits: np.ndarray
    features: np.ndarray | None


class FakeClassifier:
    """Pooled-grid MLP: normalised input → G×G cell means → tanh hidden (features) → head.

    Parameters
    ----------
    hw : (h, w)
    num_classes : K
    hidden : D (feature size)
    grid : G
    nonlinear : tanh hidden layer (interactions between regions) or identity
    black_box : hide features and head (like an imported ONNX)
    seed : weights
    """

    def __init__(self, hw=(32, 32), num_classes=5, hidden=16, grid=4, nonlinear=True, black_box=False, seed=0,
                 scale=1.0, labels=True):
        rng = np.random.default_rng(seed)
        self.input_hw = tuple(hw)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.channel_order = "RGB"
        self.output_kind = "logits"
        self.num_classes = num_classes
        self.labels = [f"class{k}" for k in range(num_classes)] if labels else None
        self.grid = grid
        self.nonlinear = nonlinear
        self.w1 = rng.normal(0, scale / np.sqrt(3 * grid * grid), size=(hidden, 3 * grid * grid)).astype(np.float32)
        self.b1 = rng.normal(0, 0.1, size=hidden).astype(np.float32)
        self.fc = rng.normal(0, 2.0 / np.sqrt(hidden), size=(num_classes, hidden)).astype(np.float32)
        self.bias = rng.normal(0, 0.1, size=num_classes).astype(np.float32)
        self.black_box = black_box
        self.has_features = not black_box
        self.feature_dim = None if black_box else hidden
        self.head = None if black_box else (self.fc, self.bias)
        self.provider = "FakeProvider"
        self.max_batch = None
        self.calls = 0
        self.images = 0

    def frame_for(self, hw):
        return Frame((hw[0], hw[1]), self.input_hw, (0, 0, *self.input_hw))

    def crop(self, image):
        h, w = self.input_hw
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), self.frame_for(image.shape[:2])

    def normalize(self, crops):
        x = np.asarray(crops, np.float32) / 255.0
        x = (x - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def baseline_value(self):
        return ((0 - self.mean) / self.std).astype(np.float32)

    def run(self, batch, features=True, feature_map=False):
        batch = np.asarray(batch, np.float32)
        self.calls += 1
        self.images += len(batch)
        b, c, h, w = batch.shape
        g = self.grid
        pooled = batch.reshape(b, c, g, h // g, g, w // g).mean(axis=(3, 5)).reshape(b, -1)
        hid = pooled @ self.w1.T + self.b1
        if self.nonlinear:
            hid = np.tanh(hid)
        logits = hid @ self.fc.T + self.bias
        keep = features and not self.black_box
        return Output(logits.astype(np.float32), hid.astype(np.float32) if keep else None)

    def __call__(self, batch):
        return self.run(batch).logits


def random_image(hw=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)


def grid_masks(hw=(32, 32), rows=2, cols=3):
    """rows·cols disjoint rectangles covering the image."""
    h, w = hw
    masks = np.zeros((rows * cols, h, w), bool)
    ys = np.linspace(0, h, rows + 1).astype(int)
    xs = np.linspace(0, w, cols + 1).astype(int)
    for r in range(rows):
        for c in range(cols):
            masks[r * cols + c, ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = True
    return masks
