"""Depth study (SPEC S2, notebook task 2.2): shallow_cnn (2 conv), medium_cnn (4), deep_cnn (6), residual_cnn.

The plain nets are 3x3 convs (pad 1, bias) + ReLU at full resolution, no BN and no pooling until the
global average pool, then one linear layer, so depth is the only thing that changes (and the plain
deep net can show vanishing gradients). Widths: 32, 64, then 128 for every further layer.
"""

from __future__ import annotations

import torch.nn as nn

from models import register_model
from models.layers import Flatten, Normalize
from models.resnets import CIFAR10_MEAN, CIFAR10_STD, S2_RECIPE, BasicBlock

WIDTHS = (32, 64, 128, 128, 128, 128)


def plain_cnn(depth: int, num_classes: int, in_shape, mean, std) -> nn.Sequential:
    """``depth`` 3x3 convs + ReLU (widths from WIDTHS), global average pool, linear head."""
    layers: list[nn.Module] = [Normalize(mean, std)]
    c = in_shape[2]
    for out in WIDTHS[:depth]:
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def shallow_cnn(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Depth study, 2 conv (32, 64), GAP, fc (20,042 params for 10 classes).

    Count: 896 + 18,496 + 650. Same layers as cnn_k3 of the kernel study.
    """
    return plain_cnn(2, num_classes, in_shape, mean, std)


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def medium_cnn(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Depth study, 4 conv (32, 64, 128, 128), GAP, fc (242,122 params for 10 classes).

    Count: 896 + 18,496 + 73,856 + 147,584 + 1,290.
    """
    return plain_cnn(4, num_classes, in_shape, mean, std)


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def deep_cnn(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Depth study, 6 conv (32, 64, 128 x4), GAP, fc (537,290 params for 10 classes).

    Count: 896 + 18,496 + 73,856 + 3 * 147,584 + 1,290.
    """
    return plain_cnn(6, num_classes, in_shape, mean, std)


@register_model(dataset="cifar10", recipe=S2_RECIPE)
def residual_cnn(num_classes: int = 10, in_shape=(32, 32, 3), mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """Depth study, conv 3->32 + 4 basic residual blocks (64, 128, 128, 128), GAP, fc (880,906 params).

    9 convs on the main path at full resolution (stride 1). Blocks: conv3x3-BN-ReLU-conv3x3-BN, bias-free convs,
    1x1 conv + BN projection where the width changes, identity otherwise.
    Count: stem 896; block 32->64 57,728; block 64->128 230,144; 2 x block 128->128 295,424; fc 1,290.
    """
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(in_shape[2], 32, 3, padding=1),
        nn.ReLU(),
        BasicBlock(32, 64, bias=False),
        BasicBlock(64, 128, bias=False),
        BasicBlock(128, 128, bias=False),
        BasicBlock(128, 128, bias=False),
        nn.AdaptiveAvgPool2d(1),
        Flatten(),
        nn.Linear(128, num_classes),
    )
