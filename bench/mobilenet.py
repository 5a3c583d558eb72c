"""MobileNetV3-Large in plain torch: the bench's mobile classifier (torchvision cannot be installed here).

The architecture of Howard et al., "Searching for MobileNetV3" (ICCV 2019), Table 1, with
torchvision's module names (``features.0`` stem, ``features.1``–``features.15`` inverted-residual
blocks with ``block.0`` … ``block.3``, ``features.16`` last convolution, ``classifier.0`` and
``classifier.3`` linear layers), so a torchvision ``mobilenet_v3_large`` state dict loads unchanged.
About 0.22 GMAC per 224×224 image (multiply-accumulates of the convolutions and linear layers,
counted by :func:`eac.bench.macs.count_macs`), 5.48 M parameters — 19× less compute than ResNet-50.

Random weights come from a seeded :class:`torch.Generator` (never the global RNG). The penultimate
features eac's PIE surrogate maps concepts to are the 1280-d input of ``classifier.3``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: Channel counts are rounded to multiples of this (the paper's and torchvision's rule).
CHANNEL_DIVISOR = 8
#: Rounding down may lose at most this fraction of a channel count before one divisor is added back.
ROUND_DOWN_LIMIT = 0.9
#: Squeeze-and-excitation: squeezed channels = expanded channels / this.
SE_REDUCTION = 4
#: Batch-norm settings of torchvision's MobileNetV3.
BN_EPS = 0.001
BN_MOMENTUM = 0.01
#: Width of the last 1×1 convolution relative to the last block's output (960 = 6 × 160).
LAST_CONV_EXPANSION = 6
#: Hidden units of the classifier head of MobileNetV3-Large.
LAST_CHANNEL = 1280
#: Dropout before the final layer (inactive in eval mode, kept for the state-dict layout).
DROPOUT = 0.2
#: Standard deviation of the linear layers' random weights (torchvision's init).
LINEAR_INIT_STD = 0.01
STEM_CHANNELS = 16


@dataclass(frozen=True)
class Block:
    """One inverted-residual block: kernel, expanded channels, output channels, SE, hard-swish, stride."""

    kernel: int
    expanded: int
    out: int
    se: bool
    hardswish: bool
    stride: int


#: MobileNetV3-Large, the paper's Table 1 (input channels follow from the previous row).
LARGE_BLOCKS: tuple[Block, ...] = (
    Block(3, 16, 16, False, False, 1),
    Block(3, 64, 24, False, False, 2),
    Block(3, 72, 24, False, False, 1),
    Block(5, 72, 40, True, False, 2),
    Block(5, 120, 40, True, False, 1),
    Block(5, 120, 40, True, False, 1),
    Block(3, 240, 80, False, True, 2),
    Block(3, 200, 80, False, True, 1),
    Block(3, 184, 80, False, True, 1),
    Block(3, 184, 80, False, True, 1),
    Block(3, 480, 112, True, True, 1),
    Block(3, 672, 112, True, True, 1),
    Block(5, 672, 160, True, True, 2),
    Block(5, 960, 160, True, True, 1),
    Block(5, 960, 160, True, True, 1),
)


def make_divisible(value: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90 % of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < ROUND_DOWN_LIMIT * value:
        rounded += divisor
    return rounded


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
             activation: type[nn.Module] | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention: global average → 1×1 conv → ReLU → 1×1 conv → hard sigmoid → scale."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.activation = nn.ReLU(inplace=True)
        self.scale_activation = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise (k×k) → optional SE → project (1×1); residual when shapes allow."""

    def __init__(self, c_in: int, block: Block, width: float) -> None:
        super().__init__()
        act = nn.Hardswish if block.hardswish else nn.ReLU
        expanded = make_divisible(block.expanded * width)
        out = make_divisible(block.out * width)
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(_conv_bn(c_in, expanded, 1, activation=act))
        layers.append(_conv_bn(expanded, expanded, block.kernel, block.stride, groups=expanded, activation=act))
        if block.se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // SE_REDUCTION)))
        layers.append(_conv_bn(expanded, out, 1))
        self.block = nn.Sequential(*layers)
        self.use_residual = block.stride == 1 and c_in == out
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class MobileNetV3(nn.Module):
    """MobileNetV3 (Large layout by default) with torchvision's module names.

    Parameters
    ----------
    num_classes : int
        Outputs of the final layer ``classifier.3``.
    width : float
        Width multiplier of every convolution (1.0: the published network).
    blocks : sequence of Block
        The inverted-residual blocks (:data:`LARGE_BLOCKS`).
    last_channel : int
        Hidden units of the head.
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, blocks: Sequence[Block] = LARGE_BLOCKS,
                 last_channel: int = LAST_CHANNEL) -> None:
        super().__init__()
        stem = make_divisible(STEM_CHANNELS * width)
        layers: list[nn.Module] = [_conv_bn(3, stem, 3, 2, activation=nn.Hardswish)]
        c_in = stem
        for block in blocks:
            layer = InvertedResidual(c_in, block, width)
            layers.append(layer)
            c_in = layer.out_channels
        last_conv = LAST_CONV_EXPANSION * c_in
        layers.append(_conv_bn(c_in, last_conv, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = make_divisible(last_channel * width)
        self.classifier = nn.Sequential(nn.Linear(last_conv, hidden), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=DROPOUT, inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: B×3×H×W → B×K."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


#: Module name of the final linear layer (its input is the penultimate feature vector).
HEAD = "classifier.3"


def init_mobilenet_(model: MobileNetV3, seed: int) -> MobileNetV3:
    """Deterministic random weights (torchvision's scheme) from a generator seeded with ``seed``.

    Convolutions: Kaiming normal (fan-out), zero bias; batch norms: weight 1, bias 0, running
    statistics 0 / 1; linear layers: normal(0, 0.01), zero bias. The global RNG is untouched.
    """
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * LINEAR_INIT_STD)
                module.bias.zero_()
    return model


def mobilenet_v3_large(seed: int, num_classes: int = 1000, width: float = 1.0) -> MobileNetV3:
    """MobileNetV3-Large with random weights from ``seed``, eval mode."""
    return init_mobilenet_(MobileNetV3(num_classes, width), seed).eval()
