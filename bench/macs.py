"""Multiply-accumulates of a PyTorch network on one input, counted layer by layer.

Counts what dominates a convolutional classifier's compute: every ``nn.Conv2d`` (output
elements × input channels per group × kernel area) and ``nn.Linear`` (output elements × input
features), measured on the shapes of a real forward pass. Normalisations, activations, pooling
and additions are left out, as in the published GMAC figures (ResNet-50: 4.09 G at 224×224;
MobileNetV3-Large: 0.22 G).
"""

from __future__ import annotations

import torch
from torch import nn


def count_macs(model: nn.Module, input_hw: tuple[int, int] = (224, 224)) -> int:
    """Multiply-accumulates of ``model`` on one 3×H×W image (convolutions and linear layers).

    Parameters
    ----------
    model : torch.nn.Module
        Any network taking B×3×H×W input.
    input_hw : (int, int)
        Input height and width.

    Returns
    -------
    int
        MACs of one image.
    """
    total = 0

    def conv(module: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        total += int(out[0].numel()) * per_output

    def linear(module: nn.Linear, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += int(out[0].numel()) * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_hw))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
