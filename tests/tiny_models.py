"""Small PyTorch classifiers for export tests (``--module tests.tiny_models:NAME``).

Every factory returns a fresh ``torch.nn.Module`` with weights drawn from a
local, seeded generator (no global seeding), so two calls give the same model.
They cover the shapes of head an exporter meets in common architectures:

* :func:`small_cnn` — conv → global pool → ``fc`` (ResNet-like head).
* :func:`sequential_head_cnn` — ``classifier = Sequential(Dropout, Linear, ReLU, Linear)``
  (VGG/EfficientNet-like: the head is ``classifier.3``; an earlier Linear has
  another width).
* :func:`efficient_head_cnn` — ``classifier = Sequential(Dropout, Linear)``: head ``classifier.1``.
* :func:`tiny_vit` — torchvision's ViT layout: head ``heads.head`` applied to the class token.
* :func:`decoy_linear_cnn` — two Linear layers with K outputs; the last one in
  module order is the head.
* :func:`softmax_cnn` — applies softmax after the head (its output is not logits).
* :func:`functional_pool_cnn` — MobileNetV2-like: ``features`` → functional global
  average pooling (no module to hook) → ``classifier.1``.
* :func:`convnext_like` — ConvNeXt-like: ``avgpool`` → ``LayerNorm`` → ``head``: the
  pooled map is not the head's input itself.
* :func:`nan_cnn` — SmallCNN whose logits are NaN (a broken model).
* :func:`tracing_mismatch_cnn` — behaves differently while being exported to
  ONNX, so validation must fail.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

NUM_CLASSES = 5
FEATURE_DIM = 16
VIT_IMAGE = 32
VIT_PATCH = 8
VIT_HEADS = 2
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


class TinyViT(nn.Module):
    """A ViT in torchvision's layout: patch conv, class token, encoder, ``heads.head``.

    Input side :data:`VIT_IMAGE` (the position embedding fixes it).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dim: int = FEATURE_DIM, patch: int = VIT_PATCH,
                 image: int = VIT_IMAGE):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.attn = nn.MultiheadAttention(dim, VIT_HEADS, batch_first=True)
        self.ln1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln2 = nn.LayerNorm(dim)
        self.ln = nn.LayerNorm(dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.heads(self.ln(x)[:, 0])


class EfficientHeadCNN(nn.Module):
    """EfficientNet/MobileNet-like: ``avgpool`` then ``classifier = Sequential(Dropout, Linear)``."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = FEATURE_DIM):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.SiLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class FunctionalPoolCNN(nn.Module):
    """MobileNetV2-like: ``features`` then ``adaptive_avg_pool2d`` as a function, then ``classifier``."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = FEATURE_DIM):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width),
                                      nn.ReLU6())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class ConvNeXtLike(nn.Module):
    """ConvNeXt-like head: ``avgpool`` → LayerNorm over channels → ``head``."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = FEATURE_DIM):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 4, stride=4), nn.GELU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(torch.flatten(self.avgpool(self.stem(x)), 1)))


class NanCNN(SmallCNN):
    """SmallCNN whose logits are NaN: a broken model must be refused, not exported."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


def tiny_vit() -> nn.Module:
    return _init(TinyViT())


def efficient_head_cnn() -> nn.Module:
    return _init(EfficientHeadCNN())


def small_cnn() -> nn.Module:
    return _init(SmallCNN())


def single_logit_cnn() -> nn.Module:
    """A binary model with one logit: nothing for a softmax over classes to explain."""
    return _init(SmallCNN(num_classes=1))


def sequential_head_cnn() -> nn.Module:
    return _init(SequentialHeadCNN())


def decoy_linear_cnn() -> nn.Module:
    return _init(DecoyLinearCNN())


def softmax_cnn() -> nn.Module:
    return _init(SoftmaxCNN())


def tracing_mismatch_cnn() -> nn.Module:
    return _init(TracingMismatchCNN())


def functional_pool_cnn() -> nn.Module:
    return _init(FunctionalPoolCNN())


def convnext_like() -> nn.Module:
    return _init(ConvNeXtLike())


def nan_cnn() -> nn.Module:
    return _init(NanCNN())


def not_a_module() -> object:
    """A factory that returns something that is not an ``nn.Module``."""
    return {"weights": [1, 2, 3]}
