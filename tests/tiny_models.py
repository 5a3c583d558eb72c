"""Small PyTorch classifiers for export tests (``--module tests.tiny_models:NAME``).

Every factory returns a fresh ``torch.nn.Module`` with weights drawn from a
local, seeded generator (no global seeding), so two calls give the same model.
They cover the shapes of head an exporter meets in common architectures:

* :func:`small_cnn` — conv → global pool → ``fc`` (ResNet-like head).
* :func:`sequential_head_cnn` — ``classifier = Sequential(Dropout, Linear, ReLU, Linear)``
  (VGG/EfficientNet-like: the head is ``classifier.3``; an earlier Linear has
  another width).
* :func:`decoy_linear_cnn` — two Linear layers with K outputs; the last one in
  module order is the head.
* :func:`softmax_cnn` — applies softmax after the head (its output is not logits).
* :func:`tracing_mismatch_cnn` — behaves differently while being exported to
  ONNX, so validation must fail.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 5
FEATURE_DIM = 16
_SEED = 1234


def _init(module: nn.Module, seed: int = _SEED) -> nn.Module:
    """Re-draw every parameter from a local generator (deterministic, no global state)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for name, buf in module.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
    return module.eval()


class SmallCNN(nn.Module):
    """conv-bn-relu ×2 → global average pool → flatten → ``fc`` (FEATURE_DIM → K)."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = FEATURE_DIM):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


class SequentialHeadCNN(nn.Module):
    """A VGG-like ``classifier`` Sequential whose last Linear is the head."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class DecoyLinearCNN(nn.Module):
    """Two Linear layers with K outputs: an auxiliary one, then the real head."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.aux = nn.Linear(12, num_classes)
        self.embed = nn.Linear(num_classes, 10)
        self.head = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.flatten(self.body(x), 1)
        return self.head(torch.relu(self.embed(self.aux(z))))


class SoftmaxCNN(SmallCNN):
    """SmallCNN whose output is softmax(logits): the head's output is not the model's output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), dim=1)


class TracingMismatchCNN(SmallCNN):
    """Adds 1 to its logits only while being exported: the ONNX graph disagrees with PyTorch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if torch.onnx.is_in_onnx_export():
            out = out + 1.0
        return out


def small_cnn() -> nn.Module:
    return _init(SmallCNN())


def sequential_head_cnn() -> nn.Module:
    return _init(SequentialHeadCNN())


def decoy_linear_cnn() -> nn.Module:
    return _init(DecoyLinearCNN())


def softmax_cnn() -> nn.Module:
    return _init(SoftmaxCNN())


def tracing_mismatch_cnn() -> nn.Module:
    return _init(TracingMismatchCNN())


def not_a_module() -> object:
    """A factory that returns something that is not an ``nn.Module``."""
    return {"weights": [1, 2, 3]}
